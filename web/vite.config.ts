import { defineConfig } from "vite";
import preact from "@preact/preset-vite";

// The gateway serves dist/ at "/" (gateway/web/static.py): hashed file names under
// assets/ are cached for a year, index.html never. No inline scripts or styles, so the
// server's Content-Security-Policy can forbid them ('self' only).
export default defineConfig({
  plugins: [preact()],
  build: {
    outDir: "dist",
    assetsDir: "assets",
    target: "es2020",
    modulePreload: { polyfill: false },
    cssCodeSplit: false,
    sourcemap: false,
    reportCompressedSize: true,
  },
  server: {
    // `npm run dev` against a local `sentchat serve` on :8000.
    proxy: {
      "/v1": "http://127.0.0.1:8000",
      "/connection": { target: "ws://127.0.0.1:8000", ws: true },
    },
  },
});
