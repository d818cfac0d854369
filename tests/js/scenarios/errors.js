'use strict';
// Permission and namespace errors as the SDK reports them: subscribe failures end in the
// unsubscribed state with the server's code; other calls reject with it. The connection stays.
const {
  enc, args, newClient, newSub, once, settle, main,
} = require('../lib');

main(async () => {
  const client = newClient('alice', { token: args.token });
  const locked = newSub(client, 'locked', 'locked:x');
  const unknown = newSub(client, 'unknown', 'nope:x');
  const waits = [once(locked, 'unsubscribed'), once(unknown, 'unsubscribed')];
  locked.subscribe();
  unknown.subscribe();
  client.connect();
  await Promise.all(waits);
  return {
    publishLocked: await settle(client.publish('locked:x', enc({ a: 1 }))),
    historyLocked: await settle(client.history('locked:x', { limit: 1 })),
    presenceLocked: await settle(client.presence('locked:x')),
    publishUnknown: await settle(client.publish('nope:x', enc({ a: 1 }))),
    state: client.state,
    subStates: { locked: locked.state, unknown: unknown.state },
  };
});
