import type { VNode } from "preact";
import { useLayoutEffect, useReducer, useRef } from "preact/hooks";

export interface Row { key: string; render: () => VNode }

const ESTIMATE = 60; // px: a row's height before it is measured
const OVERSCAN = 600; // px rendered above and below the viewport

/** Renders only the rows near the viewport (a channel of a million messages holds a few
 *  dozen DOM nodes). Heights are measured once rendered; the row at the top of the view
 *  stays put when older rows are added above it, and the list sticks to the bottom while
 *  the reader is there (new messages scroll into view). */
export function VirtualList({ rows, onNearTop, onAtBottom, label }: {
  rows: Row[]; onNearTop: () => void; onAtBottom: () => void; label: string;
}) {
  const box = useRef<HTMLDivElement>(null);
  const heights = useRef(new Map<string, number>());
  const stick = useRef(true);
  const anchor = useRef<{ key: string; delta: number } | null>(null);
  const [, rerender] = useReducer((n: number) => n + 1, 0);

  const offsets: number[] = new Array(rows.length + 1);
  offsets[0] = 0;
  for (let i = 0; i < rows.length; i++) offsets[i + 1] = offsets[i] + (heights.current.get(rows[i].key) ?? ESTIMATE);
  const total = offsets[rows.length];
  const el = box.current;
  const top = el ? el.scrollTop : Math.max(0, total - 800);
  const view = el ? el.clientHeight : 800;
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
    if (stick.current) node.scrollTop = node.scrollHeight;
    else if (anchor.current) {
      const i = rows.findIndex((r) => r.key === anchor.current!.key);
      if (i >= 0) {
        let y = 0;
        for (let j = 0; j < i; j++) y += heights.current.get(rows[j].key) ?? ESTIMATE;
        node.scrollTop = y - anchor.current.delta;
      }
    }
    if (grew) rerender(0);
  });

  const onScroll = () => {
    const node = box.current!;
    stick.current = node.scrollHeight - node.scrollTop - node.clientHeight < 40;
    // Remember which row is at the top and where, to keep it there when rows change.
    let i = 0;
    while (i < rows.length && offsets[i + 1] <= node.scrollTop) i++;
    anchor.current = i < rows.length ? { key: rows[i].key, delta: offsets[i] - node.scrollTop } : null;
    if (node.scrollTop < OVERSCAN) onNearTop();
    if (stick.current) onAtBottom();
    rerender(0);
  };

  return (
    <div class="messages" ref={box} onScroll={onScroll} role="log" aria-label={label} tabIndex={0}>
      <div style={{ height: `${offsets[first]}px` }} aria-hidden="true" />
      {rows.slice(first, last).map((r) => (
        <div key={r.key} data-row={r.key}>{r.render()}</div>
      ))}
      <div style={{ height: `${total - offsets[last]}px` }} aria-hidden="true" />
    </div>
  );
}
