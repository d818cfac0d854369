import type { VNode } from "preact";
import { useLayoutEffect, useReducer, useRef } from "preact/hooks";

export interface Row { key: string; render: () => VNode }

const ESTIMATE = 60; // px: a row's height before it is measured
const OVERSCAN = 600; // px rendered above and below the viewport

/** Renders only the rows near the viewport (a channel of a million messages holds a few
 *  dozen DOM nodes). Heights are measured once rendered; the row at the top of the view
 *  stays put when rows are added or dropped above or below it, and the list sticks to the
 *  bottom while the reader is there (new messages scroll into view) unless newer rows
 *  exist that are not held (`hasNewer`: then reaching the bottom asks for them).
 *  `bottomSeq` changing sends the list to its bottom; `focus` changing scrolls its row
 *  into view (a third of the way down). */
export function VirtualList({ rows, onNearTop, onNearBottom, onAtBottom, onJump, hasNewer, focus, bottomSeq, label }: {
  rows: Row[]; onNearTop: () => void; onNearBottom: () => void; onAtBottom: () => void; onJump: () => void;
  hasNewer: boolean; focus: { key: string; seq: number } | null; bottomSeq: number; label: string;
}) {
  const box = useRef<HTMLDivElement>(null);
  const heights = useRef(new Map<string, number>());
  const stick = useRef(true);
  const far = useRef(false); // scrolled more than a screen away from the newest
  const anchor = useRef<{ key: string; delta: number } | null>(null);
  const programmatic = useRef<number | null>(null); // the scrollTop we set ourselves
  const seenBottom = useRef(bottomSeq);
  const seenFocus = useRef<number | null>(null);
  const [, rerender] = useReducer((n: number) => n + 1, 0);

  const el = box.current;
  const view = el ? el.clientHeight : 800;
  if (bottomSeq !== seenBottom.current) {
    seenBottom.current = bottomSeq;
    stick.current = true;
    far.current = false;
    anchor.current = null;
  }
  if (focus && focus.seq !== seenFocus.current && rows.some((r) => r.key === focus.key)) {
    seenFocus.current = focus.seq;
    stick.current = false;
    anchor.current = { key: focus.key, delta: Math.round(view / 3) };
  }
  if (hasNewer) stick.current = false;

  const offsets: number[] = new Array(rows.length + 1);
  offsets[0] = 0;
  for (let i = 0; i < rows.length; i++) offsets[i + 1] = offsets[i] + (heights.current.get(rows[i].key) ?? ESTIMATE);
  const total = offsets[rows.length];
  let top = el ? el.scrollTop : Math.max(0, total - 800);
  if (anchor.current && !stick.current) {
    // Where the anchor row will be put: render the rows around it, not the stale position.
    const i = rows.findIndex((r) => r.key === anchor.current!.key);
    if (i >= 0) top = Math.max(0, offsets[i] - anchor.current.delta);
  }
  let first = 0;
  while (first < rows.length && offsets[first + 1] < top - OVERSCAN) first++;
  let last = first;
  while (last < rows.length && offsets[last] < top + view + OVERSCAN) last++;
  if (stick.current) {
    // At the bottom: render the tail whatever the (stale) scroll position says.
    let h = 0;
    last = rows.length;
    first = last;
    while (first > 0 && h < view + OVERSCAN) h += offsets[first] - offsets[--first];
  }

  useLayoutEffect(() => {
    const node = box.current;
    if (!node) return;
    let grew = false;
    for (const child of Array.from(node.querySelectorAll<HTMLElement>("[data-row]"))) {
      const key = child.dataset.row!;
      const h = child.offsetHeight;
      if (heights.current.get(key) !== h) {
        heights.current.set(key, h);
        grew = true;
      }
    }
    const before = node.scrollTop;
    if (stick.current) node.scrollTop = node.scrollHeight;
    else if (anchor.current) {
      const i = rows.findIndex((r) => r.key === anchor.current!.key);
      if (i >= 0) {
        let y = 0;
        for (let j = 0; j < i; j++) y += heights.current.get(rows[j].key) ?? ESTIMATE;
        node.scrollTop = y - anchor.current.delta;
      }
    }
    if (node.scrollTop !== before) programmatic.current = node.scrollTop;
    if (grew) rerender(0);
  });

  const onScroll = () => {
    const node = box.current!;
    const distance = node.scrollHeight - node.scrollTop - node.clientHeight;
    if (programmatic.current !== node.scrollTop) {
      // The reader scrolled (not our own adjustment): where they are now is what to keep.
      stick.current = distance < 40 && !hasNewer;
      far.current = distance > node.clientHeight;
      // Remember which row is at the top and where, to keep it there when rows change.
      let i = 0;
      while (i < rows.length && offsets[i + 1] <= node.scrollTop) i++;
      anchor.current = i < rows.length ? { key: rows[i].key, delta: offsets[i] - node.scrollTop } : null;
    }
    programmatic.current = null;
    if (node.scrollTop < OVERSCAN) onNearTop();
    if (hasNewer && distance < OVERSCAN) onNearBottom();
    if (stick.current) onAtBottom();
    rerender(0);
  };

  return (
    <>
      <div class="messages" ref={box} onScroll={onScroll} role="log" aria-label={label} tabIndex={0}
        data-has-newer={hasNewer ? "true" : undefined}>
        <div style={{ height: `${offsets[first]}px` }} aria-hidden="true" />
        {rows.slice(first, last).map((r) => (
          <div key={r.key} data-row={r.key}>{r.render()}</div>
        ))}
        <div style={{ height: `${total - offsets[last]}px` }} aria-hidden="true" />
      </div>
      {(hasNewer || far.current) && (
        <button class="jump-latest" data-testid="jump-latest" onClick={() => {
          stick.current = !hasNewer;
          far.current = false;
          onJump();
        }}>Jump to latest ↓</button>
      )}
    </>
  );
}
