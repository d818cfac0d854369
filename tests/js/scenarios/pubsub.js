'use strict';
// Two clients in one channel: each receives its own and the other's publications (with the
// publisher's ClientInfo), and a server API publication (no info, with tags), in order.
const {
  args, enc, newClient, newSub, once, times, settle, api, main,
} = require('../lib');

main(async () => {
  const alice = newClient('alice', { token: args.alice_token });
  const bob = newClient('bob', { token: args.bob_token });
  const subA = newSub(alice, 'alice', args.channel);
  const subB = newSub(bob, 'bob', args.channel);
  const readyA = once(subA, 'subscribed');
  const readyB = once(subB, 'subscribed');
  subA.subscribe();
  subB.subscribe();
  alice.connect();
  bob.connect();
  await Promise.all([readyA, readyB]);

  const gotA = times(subA, 'publication', 3);
  const gotB = times(subB, 'publication', 3);
  await subA.publish(enc({ from: 'alice' }));
  await subB.publish(enc({ from: 'bob' }));
  const apiResult = await api('publish', { channel: args.channel, data: { from: 'api' }, tags: { kind: 'server' } });
  await Promise.all([gotA, gotB]);

  // Publishing into a channel of the same namespace without being subscribed: the namespace
  // allows publish for subscribers only.
  const denied = await settle(alice.publish(args.other_channel, enc({ from: 'alice' })));
  return { apiResult, denied };
});
