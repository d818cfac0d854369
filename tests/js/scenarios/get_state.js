'use strict';
// getState (flag "reject unrecovered"): the SDK loads the stream position from the app (here:
// the server API history top), subscribes from it, and after a socket loss with more missed
// publications than the history window keeps, the server answers 112 and the SDK asks
// getState again instead of reporting an unrecovered subscription.
const {
  args, ask, enc, newClient, newSub, once, times, api, main,
} = require('../lib');

main(async () => {
  const client = newClient('alice', { token: args.token });
  const positions = [];
  const getState = async () => {
    const top = await api('history', { channel: args.channel, limit: 0 });
    const position = { offset: top.offset || 0, epoch: top.epoch };
    positions.push(position);
    return position;
  };
  const sub = newSub(client, 'state', args.channel, { getState });
  const ready = once(sub, 'subscribed');
  sub.subscribe();
  const connected = once(client, 'connected');
  client.connect();
  const ctx = await connected;
  await ready;
  const got = times(sub, 'publication', 2);
  await sub.publish(enc({ n: 1 }));
  await sub.publish(enc({ n: 2 }));
  await got;

  const resubscribed = once(sub, 'subscribed');
  await ask('abort', { client: ctx.client });
  await resubscribed;
  const live = once(sub, 'publication');
  await sub.publish(enc({ n: 'live' }));
  await live;
  return { positions };
});
