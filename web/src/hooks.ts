import { useEffect, useReducer } from "preact/hooks";
import { store } from "./state";

/** Re-render the calling component whenever the store changes. */
export function useStore(): typeof store {
  const [, tick] = useReducer((n: number) => n + 1, 0);
  useEffect(() => store.subscribe(() => tick(0)), []);
  return store;
}
