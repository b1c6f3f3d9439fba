import { defineConfig } from "vitest/config";

// The tests call a real console (and database) that console/tests/typescript.rs starts and describes
// in EB_* variables; `scripts/test.sh clients` runs them that way.
export default defineConfig({
  esbuild: { jsx: "automatic" },
  test: {
    include: ["test/**/*.test.{ts,tsx}"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // one console and database for all: files one after another
    fileParallelism: false,
  },
});
