'use strict';
// A reconnect storm seen by centrifuge-js: `n` clients follow one channel (every third
// through a server-side subscription from its token's `channels`), the Python side keeps
// publishing and cuts clients (socket aborted, or the server API's disconnect) while it
// does. Each client reports the offsets it received and its subscribed contexts; the
// Python side checks them against the acknowledged stream.
const {
  args, ask, obs, newClient, newSub, once, until, main,
} = require('../lib');

main(async () => {
  const followers = [];
  for (let i = 0; i < args.tokens.length; i += 1) {
    const label = `c${i}`;
    const serverSide = i % 3 === 2;
    const client = newClient(label, {
      token: args.tokens[i], minReconnectDelay: 50, maxReconnectDelay: 500,
    });
    let ready;
    if (serverSide) {
      ready = once(client, 'subscribed', (ctx) => ctx.channel === args.channel);
    } else {
      const sub = newSub(client, label, args.channel);
      ready = once(sub, 'subscribed');
      sub.subscribe();
    }
    const connected = once(client, 'connected');
    client.connect();
    const ctx = await connected;
    await ready;
    followers.push({ label, serverSide, client: ctx.client });
  }
  // The Python side publishes and cuts; it answers with the stream's last offset.
  const { top } = await ask('storm', { clients: followers.map((f) => f.client) });
  const log = (f) => (f.serverSide ? obs.clients[f.label].server : obs.subs[f.label]);
  await until(() => followers.every((f) => {
    const pubs = log(f).publications.filter((p) => p.channel === args.channel);
    return pubs.length >= top;
  }), 20);
  return {
    followers: followers.map((f) => ({
      serverSide: f.serverSide,
      offsets: log(f).publications.filter((p) => p.channel === args.channel).map((p) => p.offset),
      subscribed: log(f).subscribed.filter((s) => s.channel === args.channel),
    })),
  };
});
