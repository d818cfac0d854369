import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError } from "../api";
import { useStore } from "../hooks";
import { slots } from "../slots";
import type { Channel } from "../types";

/** The message box: Enter sends, Shift+Enter is a new line, "@" completes people from
 *  the directory (arrow keys + Enter/Tab), "/" shows the slash-command slot. */
export function Composer({ channel, threadParent, label }: { channel: Channel; threadParent?: number; label: string }) {
  const store = useStore();
  const [text, setText] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [matches, setMatches] = useState<{ id: string; display_name: string }[]>([]);
  const [pick, setPick] = useState(0);
  const area = useRef<HTMLTextAreaElement>(null);
  const mention = /(?:^|\s)@([A-Za-z0-9._-]*)$/.exec(text);
  const prefix = mention ? mention[1] : null;

  useEffect(() => {
    if (prefix === null) { setMatches([]); return; }
    let live = true;
    void store.directory(prefix).then((u) => { if (live) { setMatches(u.slice(0, 8)); setPick(0); } }, () => undefined);
    return () => { live = false; };
  }, [prefix]);

  const complete = (id: string) => {
    setText(text.replace(/@([A-Za-z0-9._-]*)$/, `@${id} `));
    setMatches([]);
    area.current?.focus();
  };

  const send = async () => {
    const body = text.trim();
    if (!body) return;
    setError(null);
    try {
      await store.send(channel.id, body, threadParent);
      setText("");
    } catch (e) {
      setError(e instanceof ApiError ? e.message : "Not sent: the server is unreachable.");
    }
  };

  const listId = `mentions-${threadParent ?? channel.id}`;
  return (
    <div class="composer">
      {text.startsWith("/") && slots.slashCommands.map((S, i) => <S key={i} channel={channel} text={text} setText={setText} />)}
      {matches.length > 0 && prefix !== null && (
        <ul class="completion" id={listId} role="listbox" aria-label="People">
          {matches.map((u, i) => (
            <li key={u.id} role="option" aria-selected={i === pick} class={i === pick ? "picked" : ""}
              onMouseDown={(e) => { e.preventDefault(); complete(u.id); }}>
              {u.display_name || u.id} <span class="dim">@{u.id}</span>
            </li>
          ))}
        </ul>
      )}
      <textarea ref={area} rows={2} value={text} aria-label={label} placeholder={label}
        role="combobox" aria-expanded={matches.length > 0 && prefix !== null} aria-controls={listId} aria-autocomplete="list"
        disabled={channel.archived}
        onInput={(e) => setText((e.target as HTMLTextAreaElement).value)}
        onKeyDown={(e) => {
          if (matches.length && prefix !== null) {
            if (e.key === "ArrowDown") { e.preventDefault(); setPick((pick + 1) % matches.length); return; }
            if (e.key === "ArrowUp") { e.preventDefault(); setPick((pick + matches.length - 1) % matches.length); return; }
            if (e.key === "Enter" || e.key === "Tab") { e.preventDefault(); complete(matches[pick].id); return; }
            if (e.key === "Escape") { setMatches([]); return; }
          }
          if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); void send(); }
        }} />
      {error && <p class="error" role="alert">{error}</p>}
    </div>
  );
}
