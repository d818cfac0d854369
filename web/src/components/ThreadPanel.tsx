import { useState } from "preact/hooks";
import { useStore } from "../hooks";
import { Composer } from "./Composer";
import { MessageItem } from "./MessageItem";

export function ThreadPanel({ parentId }: { parentId: number }) {
  const store = useStore();
  const [following, setFollowing] = useState(true);
  const list = store.threads.get(parentId);
  const parent = list?.[0];
  const channel = parent ? store.channels.get(parent.channel_id) : undefined;
  return (
    <aside class="thread" aria-label="Thread">
      <header class="pane-head">
        <h2>Thread</h2>
        <button class="small" aria-pressed={following} onClick={() => {
          void store.follow(parentId, !following).then(() => setFollowing(!following));
        }}>{following ? "Unfollow" : "Follow"}</button>
        <button class="small link" aria-label="Close thread" onClick={() => store.closeThread()}>✕</button>
      </header>
      <div class="thread-messages" role="log" aria-label="Thread replies">
        {!list && <p class="dim">Loading…</p>}
        {list?.map((m, i) => (
          <div key={m.id} class={i === 0 ? "thread-parent" : "thread-reply"}>
            <MessageItem m={m} inThread />
            {i === 0 && <p class="dim replies-count">{Math.max(list.length - 1, m.reply_count ?? 0)} replies</p>}
          </div>
        ))}
      </div>
      {channel && <Composer channel={channel} threadParent={parentId} label="Reply in thread" />}
    </aside>
  );
}
