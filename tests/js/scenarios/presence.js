'use strict';
// presence / presenceStats from a subscription and from the client, and their errors.
const {
  args, info, newClient, newSub, once, settle, main,
} = require('../lib');

function clients(result) {
  const out = {};
  for (const [id, i] of Object.entries(result.clients)) {
    out[id] = info(i);
  }
  return out;
}

main(async () => {
  const alice = newClient('alice', { token: args.alice_token });
  const bob = newClient('bob', { token: args.bob_token });
  const subA = newSub(alice, 'alice', args.channel);
  const subB = newSub(bob, 'bob', args.channel);
  const ready = [once(subA, 'subscribed'), once(subB, 'subscribed')];
  subA.subscribe();
  subB.subscribe();
  const connected = [once(alice, 'connected'), once(bob, 'connected')];
  alice.connect();
  bob.connect();
  const [ca, cb] = await Promise.all(connected);
  await Promise.all(ready);

  return {
    aliceClient: ca.client,
    bobClient: cb.client,
    subPresence: clients(await subA.presence()),
    subStats: await subA.presenceStats(),
    clientPresence: clients(await bob.presence(args.channel)),
    clientStats: await bob.presenceStats(args.channel),
    notSubscribed: await settle(alice.presence(args.other_channel)),
    noPresence: await settle(alice.presence('plain:presence')),
    unknownNamespace: await settle(alice.presenceStats('nope:presence')),
  };
});
