interface ImportMetaEnv {
  readonly VITE_EVENT_BUS_URL?: string;
  readonly VITE_EVENT_BUS_TOKEN?: string;
}
interface ImportMeta {
  readonly env: ImportMetaEnv;
}
