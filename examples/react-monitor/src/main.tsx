import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { createClient, EventBusProvider } from "@event-bus/react";
import { createRoot } from "react-dom/client";
import { Monitor } from "./Monitor";

// Where the console is and which token to send. In an application the token is the signed-in user's
// (e.g. Supabase: `token: async () => (await supabase.auth.getSession()).data.session?.access_token`);
// here it comes from the page's address (#api=...&token=...) or the build's environment.
const hash = new URLSearchParams(location.hash.slice(1));
const client = createClient({
  baseUrl: hash.get("api") ?? import.meta.env.VITE_EVENT_BUS_URL ?? location.origin,
  token: () => hash.get("token") ?? import.meta.env.VITE_EVENT_BUS_TOKEN,
});
const queryClient = new QueryClient({ defaultOptions: { queries: { retry: 1 } } });

createRoot(document.getElementById("root")!).render(
  <QueryClientProvider client={queryClient}>
    <EventBusProvider client={client}>
      <Monitor />
    </EventBusProvider>
  </QueryClientProvider>,
);
