// The client's state and its real-time side: one Centrifuge connection, a subscription
// per channel the user is in (recovering from the durable stream after a disconnect), the
// personal channel's notifications, and the status channels of the people on screen.
// Components read the store and re-render on `changed`.
import { Centrifuge, Subscription, UnauthorizedError } from "centrifuge";
import type { PublicationContext, SubscribedContext } from "centrifuge";
import { api, currentSession, logout, refresh } from "./api";
import type { Channel, Member, Message, MessagePage, UnreadCount, User } from "./types";

export interface ChannelView {
  messages: Message[]; // the timeline, ascending ids, each id once
  hasMore: boolean; // older messages exist on the server
  /** Newer messages exist on the server than the newest held (trimmed while scrolling
   *  back, or a window opened around an older message): live messages are not appended
   *  (that would leave a gap) but kept in `early` until paging forward reaches the end. */
  hasNewer: boolean;
  catching: boolean; // a read up to the newest is in flight: live messages wait in `early` too
  early: Message[];
  loaded: boolean;
  loading: boolean;
  readAtOpen: number; // my last-read id when the channel was opened: the "new messages" line
  /** A message to scroll to and highlight (a clicked notification); `seq` changes per request. */
  focus: { id: number; seq: number } | null;
  /** Changes when the list must go to its bottom (jump to latest). */
  bottomSeq: number;
}

export type ConnState = "connecting" | "connected" | "reconnecting" | "offline";

/** Most messages kept per channel: scrolling back further drops the newest ones from
 *  memory (reloaded when scrolling forward) so a long scroll-back stays bounded. */
export const MAX_KEPT = 3000;
const PAGE = 50;
const EARLY_MAX = 1000; // live messages buffered while the newest ones are not held

type Listener = () => void;

export class Store {
  me: User | null = null;
  conn: ConnState = "connecting";
  channels = new Map<string, Channel>();
  unread = new Map<string, UnreadCount>();
  views = new Map<string, ChannelView>();
  threads = new Map<number, Message[]>();
  users = new Map<string, User>();
  active: string | null = null;
  openThread: number | null = null;
  highlight: number | null = null; // the message a clicked notification pointed at
  error: string | null = null;
  notifyPermission: NotificationPermission | "unsupported" =
    typeof Notification === "undefined" ? "unsupported" : Notification.permission;

  private listeners = new Set<Listener>();
  private client: Centrifuge | null = null;
  private subs = new Map<string, Subscription>();
  private statusSubs = new Map<string, Subscription>();
  private readTimers = new Map<string, number>();
  private scheduled = false;
  private focusSeq = 0;
  private highlightTimer = 0;

  subscribe(fn: Listener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Coalesce bursts of events into one render per frame. */
  changed(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      this.updateTitle();
      for (const fn of this.listeners) fn();
    });
  }

  // ---- start / stop ----------------------------------------------------------------

  async start(): Promise<void> {
    const me = await api<{ user: User }>("GET", "/v1/me");
    this.me = me.user;
    this.users.set(me.user.id, me.user);
    await this.loadChannels();
    await this.loadUnread();
    this.connect();
    const first = [...this.channels.values()].find((c) => c.member && !c.archived);
    const wanted = decodeURIComponent(location.hash.replace(/^#\/c\//, ""));
    if (wanted && this.channels.has(wanted)) await this.open(wanted);
    else if (first) await this.open(first.id);
    this.changed();
  }

  async signOut(): Promise<void> {
    this.client?.disconnect();
    await logout();
    location.hash = "";
    location.reload();
  }

  private connect(): void {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const client = new Centrifuge(`${proto}://${location.host}/connection/websocket`, {
      token: currentSession()?.token,
      getToken: async () => {
        const s = await refresh();
        if (!s) throw new UnauthorizedError("signed out");
        return s.token;
      },
      minReconnectDelay: 200,
      maxReconnectDelay: 5000,
    });
    let connectedOnce = false;
    client.on("connecting", () => {
      this.conn = connectedOnce ? "reconnecting" : "connecting";
      this.changed();
    });
    client.on("connected", () => {
      connectedOnce = true;
      this.conn = "connected";
      this.changed();
    });
    client.on("disconnected", () => {
      this.conn = "offline";
      this.changed();
    });
    // The personal channel is a server-side subscription: its events come here.
    client.on("publication", (ctx) => this.onPersonal(ctx.data as Record<string, unknown>));
    this.client = client;
    for (const ch of this.channels.values()) if (ch.member) this.subscribeChannel(ch);
    client.connect();
  }

  // ---- channels -----------------------------------------------------------------------

  async loadChannels(): Promise<void> {
    const res = await api<{ channels: Channel[] }>("GET", "/v1/channels");
    this.channels = new Map(res.channels.map((c) => [c.id, c]));
    for (const c of res.channels) if (c.members) for (const u of c.members) void this.user(u);
    if (this.client) for (const c of res.channels) if (c.member) this.subscribeChannel(c);
    this.changed();
  }

  async loadUnread(): Promise<void> {
    const res = await api<{ channels: UnreadCount[] }>("GET", "/v1/unread");
    this.unread = new Map(res.channels.map((u) => [u.channel_id, u]));
    this.changed();
  }

  private subscribeChannel(ch: Channel): void {
    if (!this.client || this.subs.has(ch.id) || !ch.subscription) return;
    const sub = this.client.newSubscription(ch.subscription, { recoverable: true, positioned: true });
    sub.on("publication", (ctx: PublicationContext) => this.onChannelEvent(ch.id, ctx.data as Record<string, unknown>));
    sub.on("subscribed", (ctx: SubscribedContext) => {
      // The stream could not give back what was missed (too old, epoch changed): the
      // server's timeline is the truth, read everything after the newest id we hold.
      if (ctx.wasRecovering && !ctx.recovered) void this.catchUp(ch.id);
    });
    this.subs.set(ch.id, sub);
    sub.subscribe();
  }

  private unsubscribeChannel(id: string): void {
    const sub = this.subs.get(id);
    if (sub && this.client) {
      sub.unsubscribe();
      this.client.removeSubscription(sub);
    }
    this.subs.delete(id);
  }

  async open(id: string): Promise<void> {
    this.active = id;
    this.openThread = null;
    if (location.hash !== `#/c/${id}`) history.replaceState(null, "", `#/c/${encodeURIComponent(id)}`);
    let view = this.views.get(id);
    const readAt = this.unread.get(id)?.last_read_id ?? 0;
    if (!view) {
      view = { messages: [], hasMore: true, hasNewer: false, catching: false, early: [], loaded: false, loading: false,
        readAtOpen: readAt, focus: null, bottomSeq: 0 };
      this.views.set(id, view);
    } else {
      view.readAtOpen = readAt;
    }
    this.changed();
    if (!view.loaded) await this.loadLatest(id);
    this.markRead();
  }

  /** The newest page, replacing what is held (first open, or "jump to latest"). Live
   *  messages that arrive while it is read are buffered and added after it. */
  private async loadLatest(id: string): Promise<void> {
    const view = this.views.get(id)!;
    view.loading = true;
    view.catching = true;
    view.early = [];
    try {
      const page = await api<MessagePage>("GET", `/v1/channels/${id}/messages`, undefined, { limit: PAGE });
      view.messages = [];
      for (const m of page.messages) this.put(view, m);
      view.hasMore = page.has_more;
      view.loaded = true;
      for (const m of page.messages) void this.user(m.author_id);
    } finally {
      this.reachedEnd(view);
      view.loading = false;
      this.changed();
    }
  }

  /** Paging forward reached the newest message: live messages go to the list again. */
  private reachedEnd(view: ChannelView): void {
    view.hasNewer = false;
    view.catching = false;
    for (const m of view.early) this.put(view, m);
    view.early = [];
  }

  /** Newer messages when scrolling forward after the newest ones were trimmed; the
   *  oldest are trimmed in turn so the list stays within MAX_KEPT. */
  async loadNewer(id: string): Promise<number> {
    const view = this.views.get(id);
    if (!view || view.loading || !view.hasNewer || !view.messages.length) return 0;
    view.loading = true;
    // Only live messages that arrive after this read began can be missing from its answer.
    view.early = [];
    view.catching = true;
    try {
      const last = view.messages[view.messages.length - 1].id;
      const page = await api<MessagePage>("GET", `/v1/channels/${id}/messages`, undefined, { limit: PAGE, after: last });
      view.messages = [...view.messages, ...page.messages.filter((m) => m.id > last)];
      if (!page.has_more) this.reachedEnd(view);
      if (view.messages.length > MAX_KEPT) {
        view.messages = view.messages.slice(view.messages.length - MAX_KEPT);
        view.hasMore = true;
      }
      for (const m of page.messages) void this.user(m.author_id);
      return page.messages.length;
    } finally {
      view.catching = false;
      view.loading = false;
      this.changed();
    }
  }

  /** "Jump to latest": back to the newest messages, reloading them if they were trimmed. */
  async jumpToLatest(id: string): Promise<void> {
    const view = this.views.get(id);
    if (!view) return;
    view.bottomSeq++;
    view.focus = null;
    while (view.loading) await new Promise((r) => setTimeout(r, 20));
    if (view.hasNewer) {
      view.messages = [];
      view.hasNewer = false;
      await this.loadLatest(id);
    }
    this.changed();
    this.markRead();
  }

  /** Open a channel at one message (a clicked notification): scrolled to and highlighted;
   *  when it is not held, a window of messages around it is read in its place. */
  async openAt(channelId: string, messageId: number): Promise<void> {
    await this.open(channelId);
    const view = this.views.get(channelId);
    if (!view) return;
    if (!view.messages.some((m) => m.id === messageId)) {
      while (view.loading) await new Promise((r) => setTimeout(r, 20));
      view.loading = true;
      view.catching = true;
      view.early = [];
      try {
        const base = `/v1/channels/${channelId}/messages`;
        const [older, newer] = await Promise.all([
          api<MessagePage>("GET", base, undefined, { limit: PAGE, before: messageId + 1 }),
          api<MessagePage>("GET", base, undefined, { limit: PAGE, after: messageId }),
        ]);
        view.messages = [];
        for (const m of [...older.messages, ...newer.messages]) this.put(view, m);
        view.hasMore = older.has_more;
        view.hasNewer = true;
        if (!newer.has_more) this.reachedEnd(view);
        for (const m of view.messages) void this.user(m.author_id);
      } finally {
        view.catching = false;
        view.loading = false;
      }
    }
    view.focus = { id: messageId, seq: ++this.focusSeq };
    this.highlight = messageId;
    window.clearTimeout(this.highlightTimer);
    this.highlightTimer = window.setTimeout(() => {
      if (this.highlight === messageId) this.highlight = null;
      this.changed();
    }, 8000);
    this.changed();
  }

  /** Open a message where it lives (a clicked notification or search hit): a thread reply
   *  is shown in its thread, next to its parent in the channel. */
  async openMessage(channelId: string, id: number, parent?: number | null): Promise<void> {
    await this.openAt(channelId, parent || id);
    if (parent) {
      void this.showThread(parent);
      this.highlight = id;
      this.changed();
    }
  }

  /** Older messages for infinite scroll; returns how many were added. */
  async loadOlder(id: string): Promise<number> {
    const view = this.views.get(id);
    if (!view || view.loading || !view.hasMore || !view.messages.length) return 0;
    view.loading = true;
    try {
      const page = await api<MessagePage>("GET", `/v1/channels/${id}/messages`, undefined,
        { limit: PAGE, before: view.messages[0].id });
      view.messages = [...page.messages.filter((m) => m.id < view.messages[0].id), ...view.messages];
      view.hasMore = page.has_more;
      if (view.messages.length > MAX_KEPT) {
        // The newest are dropped from memory; scrolling forward pages them back in.
        view.messages = view.messages.slice(0, MAX_KEPT);
        view.hasNewer = true;
      }
      for (const m of page.messages) void this.user(m.author_id);
      return page.messages.length;
    } finally {
      view.loading = false;
      this.changed();
    }
  }

  /** After a recovery the stream could not serve: every timeline message after the newest held. */
  private async catchUp(id: string): Promise<void> {
    const view = this.views.get(id);
    if (!view?.loaded || view.hasNewer) {
      // Not held up to the newest: paging forward reads them when the reader gets there.
      void this.loadUnread();
      return;
    }
    for (;;) {
      const last = view.messages.length ? view.messages[view.messages.length - 1].id : 0;
      const page = await api<MessagePage>("GET", `/v1/channels/${id}/messages`, undefined, { limit: 200, after: last });
      for (const m of page.messages) this.put(view, m);
      this.changed();
      if (!page.has_more) break;
    }
    void this.loadUnread();
  }

  /** A live new message for a channel's view: into the list, or into the buffer while the
   *  newest messages are not held. Whether it was not known before. */
  private take(view: ChannelView, m: Message): boolean {
    const known = view.messages.some((x) => x.id === m.id) || view.early.some((x) => x.id === m.id);
    if (!view.hasNewer && !view.catching) this.put(view, m);
    else if (!known) {
      view.early.push(m);
      if (view.early.length > EARLY_MAX) view.early.shift();
    }
    return !known;
  }

  /** Insert or update one message, keeping ids ascending and each id once; an older
   *  version never overwrites a newer one (events may come from a page and the stream). */
  private put(view: ChannelView, m: Message): void {
    const list = view.messages;
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (list[mid].id < m.id) lo = mid + 1;
      else hi = mid;
    }
    if (lo < list.length && list[lo].id === m.id) {
      if (m.version >= list[lo].version) list[lo] = m;
      return;
    }
    list.splice(lo, 0, m);
  }

  private onChannelEvent(channelId: string, ev: Record<string, unknown>): void {
    const view = this.views.get(channelId);
    switch (ev.type) {
      case "message.created": {
        const m = ev.message as Message;
        void this.user(m.author_id);
        if (view && (view.loaded || view.loading)) {
          if (this.take(view, m)) this.countUnread(channelId, m);
        } else this.countUnread(channelId, m);
        break;
      }
      case "thread.reply": {
        const m = ev.message as Message;
        void this.user(m.author_id);
        const parentId = ev.parent_id as number;
        if (view) {
          const parent = view.messages.find((x) => x.id === parentId);
          if (parent) {
            this.put(view, { ...parent, reply_count: ev.reply_count as number,
              reply_users: ev.reply_users as string[], last_reply_at: ev.last_reply_at as number });
          }
          if (m.also_to_channel && (view.loaded || view.loading)) this.take(view, m);
        }
        const thread = this.threads.get(parentId);
        if (thread && !thread.some((x) => x.id === m.id)) thread.push(m);
        break;
      }
      case "message.updated": {
        const m = ev.message as Message;
        if (view) {
          const old = view.messages.find((x) => x.id === m.id);
          if (old) this.put(view, m);
          const j = view.early.findIndex((x) => x.id === m.id);
          if (j >= 0 && view.early[j].version <= m.version) view.early[j] = m;
        }
        this.patchThreads(m.id, () => m);
        break;
      }
      case "message.deleted": {
        const id = ev.message_id as number;
        const mark = (x: Message): Message => ({ ...x, deleted: true, text: "", rendered: [], version: ev.version as number });
        if (view) {
          const i = view.messages.findIndex((x) => x.id === id);
          if (i >= 0) view.messages[i] = mark(view.messages[i]);
        }
        this.patchThreads(id, mark);
        break;
      }
      case "reaction.added":
      case "reaction.removed": {
        const id = ev.message_id as number;
        const emoji = ev.emoji as string;
        const user = ev.user_id as string;
        const apply = (x: Message): Message => {
          const reactions = { ...(x.reactions ?? {}) };
          const who = (reactions[emoji] ?? []).filter((u) => u !== user);
          if (ev.type === "reaction.added") who.push(user);
          if (who.length) reactions[emoji] = who;
          else delete reactions[emoji];
          return { ...x, reactions };
        };
        if (view) {
          const i = view.messages.findIndex((x) => x.id === id);
          if (i >= 0) view.messages[i] = apply(view.messages[i]);
        }
        this.patchThreads(id, apply);
        break;
      }
      case "channel.updated": {
        const c = ev.channel as Channel;
        const mine = this.channels.get(channelId);
        if (mine) this.channels.set(channelId, { ...mine, topic: c.topic, archived: c.archived, name: c.name });
        break;
      }
      default:
        break;
    }
    this.changed();
  }

  private patchThreads(id: number, fn: (m: Message) => Message): void {
    for (const [pid, list] of this.threads) {
      const i = list.findIndex((x) => x.id === id);
      if (i >= 0) {
        const next = list.slice();
        next[i] = fn(list[i]);
        this.threads.set(pid, next);
      }
    }
  }

  private countUnread(channelId: string, m: Message): void {
    if (!this.me || m.author_id === this.me.id) return;
    if (channelId === this.active && document.visibilityState === "visible") {
      this.markRead();
      return;
    }
    const u = this.unread.get(channelId) ?? { channel_id: channelId, unread: 0, mentions: 0, last_read_id: 0 };
    const mentioned = new RegExp(`(?<![\\w@])@(${escapeRe(this.me.id)}|channel|here)\\b`).test(m.text);
    this.unread.set(channelId, { ...u, unread: u.unread + 1, mentions: u.mentions + (mentioned ? 1 : 0) });
  }

  /** Move my read marker to the newest message of the open channel (debounced per
   *  channel: switching channels must not cancel the previous channel's pending mark). */
  markRead(): void {
    const id = this.active;
    if (!id) return;
    window.clearTimeout(this.readTimers.get(id));
    this.readTimers.set(id, window.setTimeout(() => {
      this.readTimers.delete(id);
      const view = this.views.get(id);
      if (view?.hasNewer) return; // the newest are not on screen: nothing new was read
      const last = view?.messages.length ? view.messages[view.messages.length - 1].id : 0;
      const u = this.unread.get(id);
      if (!last || (u && u.last_read_id >= last && !u.unread)) return;
      this.unread.set(id, { channel_id: id, unread: 0, mentions: 0, last_read_id: last });
      this.changed();
      void api("POST", `/v1/channels/${id}/read`, { message_id: last }).catch(() => undefined);
    }, 300));
  }

  // ---- personal channel: notifications and membership -----------------------------------

  private onPersonal(ev: Record<string, unknown>): void {
    switch (ev.type) {
      case "notification":
        this.notify(ev);
        break;
      case "member.joined":
      case "member.left":
        if (ev.type === "member.left") {
          this.unsubscribeChannel(ev.channel_id as string);
          if (this.active === ev.channel_id) this.active = null;
        }
        void this.loadChannels().then(() => this.loadUnread());
        break;
      case "read.marked": {
        const id = ev.channel_id as string;
        const u = this.unread.get(id);
        if (u && u.last_read_id < (ev.message_id as number)) {
          this.unread.set(id, { ...u, unread: 0, mentions: 0, last_read_id: ev.message_id as number });
          this.changed();
        }
        break;
      }
      default:
        break;
    }
  }

  /** A desktop notification for what the server decided to notify (it already left out
   *  muted channels and Do Not Disturb); none for the channel I am looking at. */
  private notify(ev: Record<string, unknown>): void {
    const channelId = ev.channel_id as string;
    const looking = channelId === this.active && document.visibilityState === "visible" && document.hasFocus();
    if (looking || this.notifyPermission !== "granted" || typeof Notification === "undefined") return;
    const from = this.users.get(ev.from as string)?.display_name || (ev.from as string);
    const ch = this.channels.get(channelId);
    const where = ch && ch.name ? `#${ch.name}` : "a direct message";
    const kind = ev.kind === "mention" ? "mentioned you in" : ev.kind === "thread_reply" ? "replied in a thread in" : "wrote in";
    const n = new Notification(`${from} ${kind} ${where}`, { body: String(ev.text ?? ""), tag: `m${String(ev.message_id)}` });
    n.onclick = () => {
      window.focus();
      // The message itself: a thread reply is shown in its thread, next to its parent.
      void this.openMessage(channelId, Number(ev.message_id), ev.thread_parent as number | undefined);
      n.close();
    };
  }

  async askNotifications(): Promise<void> {
    if (typeof Notification === "undefined") return;
    this.notifyPermission = await Notification.requestPermission();
    this.changed();
  }

  // ---- threads ------------------------------------------------------------------------

  async showThread(parentId: number): Promise<void> {
    this.openThread = parentId;
    this.changed();
    const page = await api<MessagePage>("GET", `/v1/messages/${parentId}/replies`, undefined, { limit: 200 });
    this.threads.set(parentId, page.messages);
    for (const m of page.messages) void this.user(m.author_id);
    this.changed();
  }

  closeThread(): void {
    this.openThread = null;
    this.changed();
  }

  // ---- writes -------------------------------------------------------------------------

  async send(channelId: string, text: string, threadParent?: number): Promise<void> {
    const body: Record<string, unknown> = { text, client_msg_id: crypto.randomUUID() };
    if (threadParent) body.thread_parent = threadParent;
    const res = await api<{ message: Message }>("POST", `/v1/channels/${channelId}/messages`, body);
    // Shown at once; the stream's copy of the same id replaces it, never duplicates it.
    const view = this.views.get(channelId);
    if (!threadParent && view?.loaded) {
      // What I send is shown at the bottom: back to the newest first if they were trimmed.
      if (view.hasNewer) void this.jumpToLatest(channelId);
      else {
        this.put(view, res.message);
        view.bottomSeq++;
      }
    }
    if (threadParent) {
      const t = this.threads.get(threadParent);
      if (t && !t.some((x) => x.id === res.message.id)) t.push(res.message);
    }
    this.markRead();
    this.changed();
  }

  async edit(id: number, text: string): Promise<void> {
    await api("PATCH", `/v1/messages/${id}`, { text });
  }

  async remove(id: number): Promise<void> {
    await api("DELETE", `/v1/messages/${id}`);
  }

  async react(m: Message, emoji: string): Promise<void> {
    const mine = (m.reactions?.[emoji] ?? []).includes(this.me?.id ?? "");
    await api(mine ? "DELETE" : "PUT", `/v1/messages/${m.id}/reactions/${encodeURIComponent(emoji)}`);
  }

  async pin(id: number): Promise<void> {
    await api("PUT", `/v1/messages/${id}/pin`);
  }

  async pins(channelId: string): Promise<Message[]> {
    return (await api<{ messages: Message[] }>("GET", `/v1/channels/${channelId}/pins`)).messages;
  }

  async versions(id: number): Promise<{ version: number; text: string }[]> {
    return (await api<{ versions: { version: number; text: string }[] }>("GET", `/v1/messages/${id}/versions`)).versions;
  }

  async follow(parentId: number, follow: boolean): Promise<void> {
    await api("PUT", `/v1/messages/${parentId}/follow`, { follow });
  }

  async createChannel(name: string, isPrivate: boolean, topic: string): Promise<Channel> {
    const res = await api<{ channel: Channel }>("POST", "/v1/channels", { name, private: isPrivate, topic });
    await this.loadChannels();
    await this.open(res.channel.id);
    return res.channel;
  }

  async join(id: string): Promise<void> {
    await api("POST", `/v1/channels/${id}/join`);
    await this.loadChannels();
    await this.open(id);
  }

  async invite(id: string, users: string[]): Promise<void> {
    await api("POST", `/v1/channels/${id}/invite`, { user_ids: users });
  }

  async openDm(users: string[]): Promise<void> {
    const res = await api<{ channel: Channel }>("POST", "/v1/dms", { user_ids: users });
    await this.loadChannels();
    await this.open(res.channel.id);
  }

  async setMuted(id: string, muted: boolean): Promise<void> {
    await api("PUT", `/v1/channels/${id}/mute`, { muted });
    const ch = this.channels.get(id);
    if (ch) this.channels.set(id, { ...ch, muted });
    this.changed();
  }

  async setStatus(fields: Record<string, unknown>): Promise<void> {
    const res = await api<{ user: User }>("PUT", "/v1/status", fields);
    this.me = res.user;
    this.users.set(res.user.id, res.user);
    this.changed();
  }

  // ---- people -------------------------------------------------------------------------

  private pending = new Set<string>();

  /** A user's profile, fetched once, then kept current by its status channel. */
  async user(id: string): Promise<void> {
    if (this.users.has(id) || this.pending.has(id)) return;
    this.pending.add(id);
    try {
      const res = await api<{ user: User }>("GET", `/v1/users/${encodeURIComponent(id)}`);
      this.users.set(id, res.user);
      this.watchStatus(id);
      this.changed();
    } catch {
      // An unknown author (removed account): shown by id.
    } finally {
      this.pending.delete(id);
    }
  }

  private watchStatus(id: string): void {
    if (!this.client || this.statusSubs.has(id)) return;
    const sub = this.client.newSubscription(`status:${id}`);
    sub.on("publication", (ctx) => {
      const ev = ctx.data as Record<string, unknown>;
      const u = this.users.get(id);
      if (!u) return;
      if (ev.type === "status.changed") this.users.set(id, { ...u, status: ev.status as User["status"] });
      else if (ev.type === "presence.changed") this.users.set(id, { ...u, status: { ...u.status, online: Boolean(ev.online) } });
      if (id === this.me?.id) this.me = this.users.get(id)!;
      this.changed();
    });
    this.statusSubs.set(id, sub);
    sub.subscribe();
  }

  async members(id: string, cursor?: string): Promise<{ members: Member[]; next: string | null }> {
    return api("GET", `/v1/channels/${id}/members`, undefined, { cursor, limit: 100 });
  }

  async directory(prefix: string): Promise<{ id: string; display_name: string }[]> {
    const res = await api<{ users: { id: string; display_name: string }[] }>("GET", "/v1/users", undefined, { prefix, limit: 20 });
    return res.users;
  }

  name(id: string): string {
    return this.users.get(id)?.display_name || id;
  }

  channelLabel(ch: Channel): string {
    if (ch.kind === "dm" || ch.kind === "group_dm") {
      const others = (ch.members ?? []).filter((u) => u !== this.me?.id);
      return others.map((u) => this.name(u)).join(", ") || "(just you)";
    }
    return ch.name;
  }

  private updateTitle(): void {
    let total = 0;
    for (const u of this.unread.values()) if (!this.channels.get(u.channel_id)?.muted) total += u.unread;
    const title = total ? `(${total}) SENTchat` : "SENTchat";
    if (document.title !== title) document.title = title;
  }
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

export const store = new Store();
