import { useState } from "preact/hooks";
import { ApiError } from "../api";
import { useStore } from "../hooks";
import { renderMarkdown } from "../markdown";
import { slots } from "../slots";
import type { Message } from "../types";
import { PresenceDot } from "./Status";

const QUICK = ["👍", "🎉", "😄", "👀", "❤️", "✅"];

export function time(t: number): string {
  return new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

export function MessageItem({ m, inThread }: { m: Message; inThread?: boolean }) {
  const store = useStore();
  const [editing, setEditing] = useState(false);
  const [draft, setDraft] = useState(m.text);
  const [picker, setPicker] = useState(false);
  const [confirm, setConfirm] = useState(false);
  const [versions, setVersions] = useState<{ version: number; text: string }[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const me = store.me?.id ?? null;
  const mine = m.author_id === me;
  const admin = store.me?.role === "admin" || store.me?.role === "owner";
  const fail = (e: unknown) => setError(e instanceof ApiError ? e.message : String(e));

  if (m.deleted) {
    return <article class={"msg deleted" + (store.highlight === m.id ? " highlight" : "")} data-message={m.id}><p class="dim">This message was deleted.</p></article>;
  }
  return (
    <article class={"msg" + (store.highlight === m.id ? " highlight" : "")} data-message={m.id} aria-label={`${store.name(m.author_id)} at ${time(m.created_at)}`}>
      <header>
        <PresenceDot user={m.author_id} />
        <strong class="author">{store.name(m.author_id)}</strong>
        <time dateTime={new Date(m.created_at * 1000).toISOString()}>{time(m.created_at)}</time>
        {m.edited_at && (
          admin
            ? <button class="link edited" onClick={() => void store.versions(m.id).then(setVersions, fail)}>(edited)</button>
            : <span class="edited dim">(edited)</span>
        )}
      </header>
      {editing ? (
        <form class="edit" onSubmit={(e) => {
          e.preventDefault();
          void store.edit(m.id, draft).then(() => setEditing(false), fail);
        }}>
          <label class="sr-only" for={`edit-${m.id}`}>Edit message</label>
          <textarea id={`edit-${m.id}`} value={draft} onInput={(e) => setDraft((e.target as HTMLTextAreaElement).value)}
            onKeyDown={(e) => { if (e.key === "Escape") setEditing(false); }} />
          <button type="submit" class="small">Save</button>
          <button type="button" class="small link" onClick={() => setEditing(false)}>Cancel</button>
        </form>
      ) : (
        <div class="body">{renderMarkdown(m.text, m.rendered, me)}</div>
      )}
      {slots.linkPreviews.map((P, i) => <P key={i} message={m} />)}
      {versions && (
        <ol class="versions" aria-label="Earlier versions">
          {versions.map((v) => <li key={v.version}>v{v.version}: {v.text}</li>)}
        </ol>
      )}
      <div class="reactions">
        {Object.entries(m.reactions ?? {}).map(([emoji, who]) => (
          <button key={emoji} class={"reaction" + (who.includes(me ?? "") ? " mine" : "")}
            title={who.map((u) => store.name(u)).join(", ")} aria-pressed={who.includes(me ?? "")}
            aria-label={`${emoji} ${who.length}: ${who.map((u) => store.name(u)).join(", ")}`}
            onClick={() => void store.react(m, emoji).catch(fail)}>
            {emoji} {who.length}
          </button>
        ))}
      </div>
      {!inThread && (m.reply_count ?? 0) > 0 && (
        <button class="link replies" onClick={() => void store.showThread(m.id)}>
          {m.reply_count} {m.reply_count === 1 ? "reply" : "replies"}
        </button>
      )}
      <div class="actions" role="toolbar" aria-label="Message actions">
        <button class="small" aria-label="Add reaction" aria-expanded={picker} onClick={() => setPicker(!picker)}>☺+</button>
        {!inThread && !m.thread_parent && <button class="small" onClick={() => void store.showThread(m.id)}>Reply in thread</button>}
        {mine && <button class="small" onClick={() => { setDraft(m.text); setEditing(true); }}>Edit</button>}
        {(mine || admin) && (confirm
          ? <button class="small danger" onClick={() => void store.remove(m.id).catch(fail)}>Confirm delete</button>
          : <button class="small" onClick={() => setConfirm(true)}>Delete</button>)}
        <button class="small" onClick={() => void store.pin(m.id).catch(fail)}>Pin</button>
        {slots.messageButtons.map((B, i) => <B key={i} message={m} />)}
      </div>
      {picker && (
        <div class="picker" role="group" aria-label="Pick a reaction">
          {QUICK.map((e) => (
            <button key={e} class="small" aria-label={`React ${e}`} onClick={() => { setPicker(false); void store.react(m, e).catch(fail); }}>{e}</button>
          ))}
        </div>
      )}
      {error && <p class="error" role="alert">{error}</p>}
    </article>
  );
}
