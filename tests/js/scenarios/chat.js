'use strict';
// The chat product from centrifuge-js: RPC methods (channels.create, messages.send/edit/
// delete, reactions.add), a subscription whose getState loads the timeline with
// messages.list (position first), the typed events, and a private channel of someone else
// refused with 103.
const {
  args, ask, enc, dec, newClient, newSub, once, times, main,
} = require('../lib');

main(async () => {
  const client = newClient('alice', { token: args.token });
  const connected = once(client, 'connected');
  client.connect();
  await connected;
  const call = async (method, params) => dec((await client.rpc(method, enc(params))).data);

  const created = await call('channels.create', { name: args.name });
  const channel = created.channel;
  let loaded = null;
  const getState = async () => {
    const page = await call('messages.list', { channel_id: channel.id });
    loaded = page.messages.map((m) => m.id);
    return page.position;
  };
  const sub = newSub(client, 'chat', channel.subscription, { getState });
  const subscribed = once(sub, 'subscribed');
  sub.subscribe();
  await subscribed;

  const events = times(sub, 'publication', 4);
  const sent = await call('messages.send', { channel_id: channel.id, text: 'from js', client_msg_id: 'js-1' });
  const retried = await call('messages.send', { channel_id: channel.id, text: 'from js', client_msg_id: 'js-1' });
  await call('messages.edit', { message_id: sent.message.id, text: 'from js (edited)' });
  await call('reactions.add', { message_id: sent.message.id, emoji: ':wave:' });
  await call('messages.delete', { message_id: sent.message.id });
  const got = (await events).map((ctx) => dec(ctx.data).type);

  let badParams = null;
  try {
    await call('messages.send', { channel_id: channel.id, text: '' });
  } catch (e) {
    badParams = { code: e.code, message: e.message };
  }

  const other = newSub(client, 'private', args.private_subscription);
  const refused = once(other, 'unsubscribed');
  other.subscribe();
  const unsub = await refused;
  return {
    loaded, sent: sent.message, retried, got, badParams, refused: { code: unsub.code },
  };
});
