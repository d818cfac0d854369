'use strict';
// Channels that need a subscription token: `$secret:…` (private prefix) fetched with the
// subscription getToken, `secret:…` with a token given up front, an expired token (109) that
// getToken replaces, and no token at all (103). A token for another channel is a protocol
// violation: the server closes the connection with 3500.
const {
  args, ask, enc, newClient, newSub, once, main,
} = require('../lib');

main(async () => {
  const client = newClient('alice', { token: args.token });
  const connected = once(client, 'connected');
  client.connect();
  const ctx = await connected;

  const tokenRequests = [];
  const getToken = async (c) => {
    tokenRequests.push(c.channel);
    return (await ask('sub_token', { channel: c.channel, client: ctx.client })).token;
  };
  const priv = newSub(client, 'private', args.private_channel, { getToken });
  const given = newSub(client, 'given', args.secret_channel, { token: args.secret_token });
  const renewed = newSub(client, 'renewed', args.renew_channel, { token: args.expired_sub_token, getToken });
  const none = newSub(client, 'none', args.untokened_channel);

  const waits = [
    once(priv, 'subscribed'), once(given, 'subscribed'), once(renewed, 'subscribed'),
    once(none, 'unsubscribed'),
  ];
  for (const s of [priv, given, renewed, none]) {
    s.subscribe();
  }
  await Promise.all(waits);

  const got = once(priv, 'publication');
  await priv.publish(enc({ secret: 1 }));
  await got;

  // Another connection presents alice's token for a different channel.
  const mallory = newClient('mallory', { token: args.token });
  const closed = once(mallory, 'disconnected');
  newSub(mallory, 'mismatch', args.mismatch_channel, { token: args.secret_token }).subscribe();
  mallory.connect();
  await closed;
  return { tokenRequests, states: { private: priv.state, given: given.state, renewed: renewed.state, none: none.state } };
});
