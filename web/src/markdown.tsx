// Message text to Preact nodes. Never HTML strings: every character a user typed ends up
// in a text node, so markup in a message is shown, not run. Links are kept only for
// http(s) and mailto targets; anything else (javascript:, data:...) stays plain text.
import type { ComponentChildren } from "preact";
import type { Snippet } from "./types";

const SAFE_URL = /^(https?:\/\/|mailto:)[^\s<>"]+$/i;

export function safeUrl(url: string): string | null {
  return SAFE_URL.test(url) ? url : null;
}

// Inline syntax, tried left to right: `code`, **bold**, *em* / _em_, ~~strike~~,
// [text](url), bare http(s) URLs, @mentions.
const INLINE =
  /(`[^`\n]+`)|(\*\*[^*\n]+\*\*)|(~~[^~\n]+~~)|(\*[^*\n]+\*|(?<![\w])_[^_\n]+_(?![\w]))|(\[[^\]\n]{1,200}\]\([^)\s]{1,2000}\))|(https?:\/\/[^\s<>"')\]]+)|((?<![\w@])@[A-Za-z0-9][A-Za-z0-9._-]{0,63})/g;

function inline(text: string, me: string | null, key: string): ComponentChildren[] {
  const out: ComponentChildren[] = [];
  let last = 0;
  let i = 0;
  for (const m of text.matchAll(INLINE)) {
    const start = m.index ?? 0;
    if (start > last) out.push(text.slice(last, start));
    const k = `${key}.${i++}`;
    const [whole, code, bold, strike, em, link, bare, mention] = m;
    if (code) out.push(<code key={k}>{code.slice(1, -1)}</code>);
    else if (bold) out.push(<strong key={k}>{inline(bold.slice(2, -2), me, k)}</strong>);
    else if (strike) out.push(<del key={k}>{inline(strike.slice(2, -2), me, k)}</del>);
    else if (em) out.push(<em key={k}>{inline(em.slice(1, -1), me, k)}</em>);
    else if (link) {
      const close = link.indexOf("](");
      const label = link.slice(1, close);
      const url = safeUrl(link.slice(close + 2, -1));
      out.push(url ? <a key={k} href={url} target="_blank" rel="noopener noreferrer nofollow">{label}</a> : whole);
    } else if (bare) {
      const url = safeUrl(bare.replace(/[.,;:!?]+$/, ""));
      if (url) {
        out.push(<a key={k} href={url} target="_blank" rel="noopener noreferrer nofollow">{url}</a>);
        if (url.length < bare.length) out.push(bare.slice(url.length));
      } else out.push(bare);
    } else if (mention) {
      const name = mention.slice(1).replace(/\.+$/, "");
      const mine = name === me || name === "channel" || name === "here";
      out.push(<span key={k} class={mine ? "mention mention-me" : "mention"}>{mention}</span>);
    }
    last = start + whole.length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

const FENCE = /^```[ \t]*([A-Za-z0-9_+#.-]*)[ \t]*\n([\s\S]*?)\n```[ \t]*$/gm;

/** Render a message: fenced code blocks as code (the server's snippet when it has one),
 *  the rest line by line with inline Markdown and block quotes. */
export function renderMarkdown(text: string, snippets: Snippet[], me: string | null): ComponentChildren {
  const parts: ComponentChildren[] = [];
  let last = 0;
  let n = 0;
  for (const m of text.matchAll(FENCE)) {
    const start = m.index ?? 0;
    if (start > last) parts.push(...blocks(text.slice(last, start), me, `b${n}`));
    const snippet = snippets[n];
    const code = snippet ? snippet.code : m[2];
    const lang = snippet ? snippet.lang : m[1] || "text";
    parts.push(
      <pre key={`f${n}`} class="code" data-lang={lang}><code>{code}</code></pre>,
    );
    n++;
    last = start + m[0].length;
  }
  if (last < text.length) parts.push(...blocks(text.slice(last), me, `b${n}`));
  return parts;
}

function blocks(text: string, me: string | null, key: string): ComponentChildren[] {
  const lines = text.replace(/^\n+|\n+$/g, "").split("\n");
  const out: ComponentChildren[] = [];
  lines.forEach((line, i) => {
    const k = `${key}.${i}`;
    if (line.startsWith("> ")) out.push(<blockquote key={k}>{inline(line.slice(2), me, k)}</blockquote>);
    else out.push(<p key={k}>{line ? inline(line, me, k) : " "}</p>);
  });
  return out;
}
