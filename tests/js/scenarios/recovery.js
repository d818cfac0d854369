'use strict';
// The client loses its socket (aborted server-side by the Python test) while publications
// continue; it reconnects, resubscribes with its position, and the server recovers what it
// missed (recovered: true). Covered for client-side subscriptions and for a server-side one
// (connection token `channels`, recovered through the connect command's `subs`). A channel
// whose history window is smaller than the gap reports wasRecovering without recovered and
// replays nothing.
const {
  args, ask, enc, newClient, newSub, once, times, main,
} = require('../lib');

main(async () => {
  const client = newClient('alice', { token: args.token });
  const subs = {};
  const ready = [];
  for (const [label, channel] of Object.entries(args.channels)) {
    subs[label] = newSub(client, label, channel);
    ready.push(once(subs[label], 'subscribed'));
    subs[label].subscribe();
  }
  const onServerChannel = (ctx) => ctx.channel === args.server_channel;
  ready.push(once(client, 'subscribed', onServerChannel));
  const connected = once(client, 'connected');
  client.connect();
  const ctx = await connected;
  await Promise.all(ready);

  // Two publications everywhere before the loss.
  for (const sub of Object.values(subs)) {
    const got = times(sub, 'publication', 2);
    await sub.publish(enc({ n: 1 }));
    await sub.publish(enc({ n: 2 }));
    await got;
  }
  let got = times(client, 'publication', 2);
  await client.publish(args.server_channel, enc({ n: 1 }));
  await client.publish(args.server_channel, enc({ n: 2 }));
  await got;

  const resubscribed = Object.values(subs).map((sub) => once(sub, 'subscribed'));
  resubscribed.push(once(client, 'subscribed', onServerChannel));
  const recoveredPubs = [
    times(subs.recovered, 'publication', args.missed.recovered),
    times(client, 'publication', args.missed.server),
  ];
  const reconnected = once(client, 'connected');
  const server = await ask('abort', { client: ctx.client });
  const again = await reconnected;
  await Promise.all(resubscribed);
  await Promise.all(recoveredPubs);

  // One more live publication after recovery, everywhere.
  const live = Object.values(subs).map((sub) => once(sub, 'publication', (p) => !!p.info));
  for (const sub of Object.values(subs)) {
    await sub.publish(enc({ n: 'live' }));
  }
  await Promise.all(live);
  got = once(client, 'publication', (p) => !!p.info);
  await client.publish(args.server_channel, enc({ n: 'live' }));
  await got;
  return { firstClient: ctx.client, secondClient: again.client, server };
});
