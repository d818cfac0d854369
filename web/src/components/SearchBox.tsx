// The header's search box (slots.headerSearch): Enter searches, Escape closes; the results
// list the hits with their snippets, pages on with the cursor, and a hit opens its message.
import type { JSX } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, api } from "../api";
import { store } from "../state";
import type { HeaderSlotProps } from "../slots";
import type { Message } from "../types";

export interface SearchHit {
  message: Message;
  channel: { id: string; kind: string; name: string | null };
  author: { id: string; display_name: string };
  snippet: string;
}
interface SearchPage { hits: SearchHit[]; total: number; total_more: boolean; next_cursor: string | null }

const ENTITIES: Record<string, string> = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'" };

/** Entities back to characters, for a text node (never parsed as HTML). */
export function unescapeHtml(s: string): string {
  return s.replace(/&(#x[0-9a-f]+|#[0-9]+|[a-z]+);/gi, (whole, e: string) => {
    if (e[0] === "#") {
      const code = e[1] === "x" || e[1] === "X" ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10);
      return code > 0 && code <= 0x10ffff ? String.fromCodePoint(code) : whole;
    }
    return ENTITIES[e.toLowerCase()] ?? whole;
  });
}

/** The server's snippet (escaped text, matches in <mark>…</mark>) as text and <mark>
 *  elements only: split on the two tokens, everything else is text, so no markup is made. */
export function snippetNodes(snippet: string): JSX.Element[] {
  const out: JSX.Element[] = [];
  let marked = false;
  let i = 0;
  for (const part of snippet.split(/(<mark>|<\/mark>)/)) {
    if (part === "<mark>") marked = true;
    else if (part === "</mark>") marked = false;
    else if (part) {
      const text = unescapeHtml(part);
      out.push(marked ? <mark key={i++}>{text}</mark> : <span key={i++}>{text}</span>);
    }
  }
  return out;
}

function where(hit: SearchHit): string {
  const known = store.channels.get(hit.channel.id);
  if (known) return known.kind === "dm" || known.kind === "group_dm" ? store.channelLabel(known) : `#${known.name}`;
  return hit.channel.kind === "dm" || hit.channel.kind === "group_dm" ? "Direct message" : `#${hit.channel.name ?? hit.channel.id}`;
}

export function SearchBox(_props: HeaderSlotProps) {
  const [q, setQ] = useState("");
  const [open, setOpen] = useState(false);
  const [searched, setSearched] = useState("");
  const [hits, setHits] = useState<SearchHit[]>([]);
  const [total, setTotal] = useState<{ n: number; more: boolean } | null>(null);
  const [cursor, setCursor] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const input = useRef<HTMLInputElement>(null);
  const seq = useRef(0);

  const run = async (query: string, after: string | null) => {
    const mine = ++seq.current;
    setBusy(true);
    setError(null);
    try {
      const page = await api<SearchPage>("GET", "/v1/search/messages", undefined, {
        q: query, cursor: after ?? undefined, limit: 20,
        tz: Intl.DateTimeFormat().resolvedOptions().timeZone || undefined,
      });
      if (mine !== seq.current) return;
      setHits((old) => (after ? [...old, ...page.hits] : page.hits));
      setTotal({ n: page.total, more: page.total_more });
      setCursor(page.next_cursor);
    } catch (e) {
      if (mine !== seq.current) return;
      setError(e instanceof ApiError ? e.message : "Cannot reach the server.");
      if (!after) { setHits([]); setTotal(null); setCursor(null); }
    } finally {
      if (mine === seq.current) setBusy(false);
    }
  };

  const submit = (e: Event) => {
    e.preventDefault();
    const query = q.trim();
    if (!query) return;
    setSearched(query);
    setOpen(true);
    setHits([]);
    setTotal(null);
    void run(query, null);
  };

  const close = () => {
    seq.current++;
    setOpen(false);
    setBusy(false);
    input.current?.focus();
  };

  useEffect(() => {
    if (!open) return;
    const onKey = (e: KeyboardEvent) => {
      if (e.key === "Escape" && !e.defaultPrevented) {
        e.preventDefault();
        close();
      }
    };
    document.addEventListener("keydown", onKey);
    return () => document.removeEventListener("keydown", onKey);
  }, [open]);

  const pick = (hit: SearchHit) => {
    setOpen(false);
    void store.openMessage(hit.message.channel_id, hit.message.id, hit.message.thread_parent);
  };

  return (
    <div class="search">
      <form role="search" aria-label="Messages" onSubmit={submit}>
        <label class="sr-only" for="search-q">Search messages</label>
        <input id="search-q" type="search" ref={input} value={q} placeholder="Search" autocomplete="off"
          data-testid="search-input" aria-controls={open ? "search-results" : undefined}
          onInput={(e) => setQ((e.target as HTMLInputElement).value)}
          onKeyDown={(e) => {
            // Escape closes the results and keeps the words (the field would clear itself).
            if (e.key === "Escape" && open) {
              e.preventDefault();
              close();
            }
          }} />
      </form>
      {open && (
        <section id="search-results" class="search-results" aria-label={`Search results for ${searched}`} data-testid="search-results">
          <div class="search-top">
            <p class="dim" role="status">
              {busy && !hits.length ? "Searching…" : error ? "" :
                total ? `${total.n.toLocaleString()}${total.more ? "+" : ""} ${total.n === 1 && !total.more ? "result" : "results"}` : ""}
            </p>
            <button type="button" class="small" onClick={close}>Close</button>
          </div>
          {error && <p class="error" role="alert">{error}</p>}
          {total && !hits.length && !error && <p>No messages found.</p>}
          <ul class="hits">
            {hits.map((hit) => (
              <li key={hit.message.id}>
                <button type="button" class="hit" data-message={hit.message.id} onClick={() => pick(hit)}>
                  <span class="hit-meta">
                    <strong class="hit-chan">{where(hit)}</strong>{" "}
                    <span class="hit-author">{hit.author.display_name || hit.author.id}</span>{" "}
                    <time dateTime={new Date(hit.message.created_at * 1000).toISOString()}>
                      {new Date(hit.message.created_at * 1000).toLocaleString([], { dateStyle: "medium", timeStyle: "short" })}
                    </time>
                  </span>
                  <span class="snippet">{snippetNodes(hit.snippet)}</span>
                </button>
              </li>
            ))}
          </ul>
          {cursor && (
            <button type="button" class="small more" disabled={busy} onClick={() => void run(searched, cursor)}>
              {busy ? "Loading…" : "Load more"}
            </button>
          )}
        </section>
      )}
    </div>
  );
}
