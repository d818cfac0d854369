'use strict';
// history with limit, reverse and since, from a subscription and from the client.
const {
  args, enc, pub, newClient, newSub, once, times, settle, main,
} = require('../lib');

function hist(result) {
  return { offset: result.offset, epoch: result.epoch, publications: result.publications.map(pub) };
}

main(async () => {
  const alice = newClient('alice', { token: args.token });
  const sub = newSub(alice, 'alice', args.channel);
  const ready = once(sub, 'subscribed');
  sub.subscribe();
  alice.connect();
  const subscribedCtx = await ready;
  const got = times(sub, 'publication', 5);
  for (let n = 1; n <= 5; n += 1) {
    await sub.publish(enc({ n }));
  }
  await got;
  const epoch = subscribedCtx.streamPosition.epoch;
  return {
    epoch,
    first3: hist(await sub.history({ limit: 3 })),
    last2Reverse: hist(await sub.history({ limit: 2, reverse: true })),
    all: hist(await sub.history({ limit: -1 })),
    noLimit: hist(await sub.history({})),
    sinceOffset2: hist(await sub.history({ limit: 10, since: { offset: 2, epoch } })),
    beforeOffset4Reverse: hist(await sub.history({ limit: 10, since: { offset: 4, epoch }, reverse: true })),
    fromClient: hist(await alice.history(args.channel, { limit: 1, reverse: true })),
    wrongEpoch: await settle(sub.history({ limit: 1, since: { offset: 1, epoch: 'not-the-epoch' } })),
    noHistory: await settle(alice.history('plain:history', { limit: 1 })),
    notSubscribed: await settle(alice.history(args.other_channel, { limit: 1 })),
  };
});
