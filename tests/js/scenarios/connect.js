'use strict';
// Connect with a token; the subscription exists before connect(), so the SDK pipelines
// `connect` and `subscribe` in the first frame. Then an RPC and a publish round trip.
const {
  args, protobuf, dec, enc, ask, newClient, newSub, once, recordingWebSocket, main,
} = require('../lib');

main(async () => {
  const frames = [];
  const client = newClient('alice', { token: args.token, websocket: recordingWebSocket(frames) });
  const sub = newSub(client, 'chat', args.channel);
  sub.subscribe();
  const connected = once(client, 'connected');
  const subscribedEv = once(sub, 'subscribed');
  client.connect();
  const ctx = await connected;
  await subscribedEv;
  await sub.ready(5000);

  // What the first frame carried.
  const first = frames[0];
  let firstFrame;
  if (protobuf) {
    firstFrame = {
      binary: typeof first !== 'string',
      hasChannel: Buffer.from(first).includes(Buffer.from(args.channel)),
      hasToken: Buffer.from(first).includes(Buffer.from(args.token)),
    };
  } else {
    const cmds = first.trim().split('\n').map((line) => JSON.parse(line));
    firstFrame = { commands: cmds.map((c) => Object.keys(c).filter((k) => k !== 'id')[0]) };
  }

  const server = await ask('connected', { client: ctx.client });

  const rpc = await client.rpc('whoami', enc({}));
  const received = once(sub, 'publication');
  await sub.publish(enc({ text: 'hello' }));
  await received;
  return {
    connectedCtx: ctx,
    clientState: client.state,
    subState: sub.state,
    firstFrame,
    server,
    rpc: dec(rpc.data),
  };
});
