import { defineConfig } from "vite";

export default defineConfig({
  // JSX without a plugin: esbuild's automatic runtime
  esbuild: { jsx: "automatic" },
  // @event-bus/* are linked from clients/typescript: one React and one TanStack Query for all
  resolve: { dedupe: ["react", "react-dom", "@tanstack/react-query"] },
  build: {
    outDir: "dist",
    sourcemap: true,
    rollupOptions: {
      // TanStack Query marks its modules "use client" for React Server Components: nothing to bundle
      onwarn(warning, warn) {
        if (warning.code !== "MODULE_LEVEL_DIRECTIVE") warn(warning);
      },
    },
  },
});
