'use strict';
// Server API actions reaching the SDK: subscribe (server-side subscription + publication),
// unsubscribe (code 2000, client stays connected), disconnect with a reconnect code (the SDK
// comes back) and the default disconnect (3503, terminal: no reconnect).
const {
  args, dec, newClient, newSub, once, sleep, api, main,
} = require('../lib');

main(async () => {
  const client = newClient('alice', { token: args.token, minReconnectDelay: 50, maxReconnectDelay: 100 });
  const sub = newSub(client, 'chat', args.channel);
  const subscribedEv = once(sub, 'subscribed');
  sub.subscribe();
  client.connect();
  await subscribedEv;

  // Server-side subscription added while connected.
  const serverSubscribed = once(client, 'subscribed');
  await api('subscribe', { user: args.user, channel: args.server_channel });
  const serverSub = await serverSubscribed;
  const serverPub = once(client, 'publication');
  await api('publish', { channel: args.server_channel, data: { via: 'server-side' } });
  const serverPubCtx = await serverPub;

  const unsubscribed = once(sub, 'unsubscribed');
  await api('unsubscribe', { user: args.user, channel: args.channel });
  const unsubCtx = await unsubscribed;
  const afterUnsub = { client: client.state, sub: sub.state };

  const reconnecting = once(client, 'connecting');
  const reconnected = once(client, 'connected');
  await api('disconnect', { user: args.user, disconnect: { code: 4001, reason: 'come back' } });
  const reconnectingCtx = await reconnecting;
  await reconnected;

  const disconnected = once(client, 'disconnected');
  await api('disconnect', { user: args.user });
  const disconnectedCtx = await disconnected;
  // Many reconnect delays later it is still disconnected.
  await sleep(500);
  return {
    serverSub: { channel: serverSub.channel, recoverable: serverSub.recoverable },
    serverPub: { channel: serverPubCtx.channel, data: dec(serverPubCtx.data) },
    unsubCtx,
    afterUnsub,
    reconnectingCtx,
    disconnectedCtx,
    finalState: client.state,
  };
});
