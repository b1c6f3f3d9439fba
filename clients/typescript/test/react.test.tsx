// @vitest-environment jsdom
import { describe, expect, it } from "vitest";
import { act, renderHook, waitFor } from "@testing-library/react";
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import type { ReactNode } from "react";
import {
  createClient,
  EventBusProvider,
  useDeadLetters,
  useEvent,
  useEvents,
  useEventStats,
  useEventStream,
  useProcessPendingEvents,
  usePublishEvent,
  useRetryDelivery,
  useSubscriptions,
} from "@event-bus/react";
import { env } from "./env";

const WAIT = { timeout: 30_000 };

function wrapper(token: string) {
  const qc = new QueryClient({ defaultOptions: { queries: { retry: false }, mutations: { retry: false } } });
  const client = createClient({ baseUrl: env.url, token });
  return ({ children }: { children: ReactNode }) => (
    <QueryClientProvider client={qc}>
      <EventBusProvider client={client}>{children}</EventBusProvider>
    </QueryClientProvider>
  );
}

describe("@event-bus/react in jsdom against a real console", () => {
  it("useEvents loads as design document 001 writes it, filters and paginates", async () => {
    // 001: const { data: events, isLoading } = useEvents({ status: 'pending', event_type: 'lead.created' });
    const { result } = renderHook(() => useEvents({ status: "failed", event_type: "order.#", aggregate_type: "order" }, { limit: 3 }), {
      wrapper: wrapper(env.reader),
    });
    await waitFor(() => expect(result.current.isSuccess).toBe(true), WAIT);
    const events = result.current.data!;
    expect(events).toHaveLength(3);
    expect(events.every((e) => e.status === "failed" && e.entity_type === "order" && e.tenant_id === env.tenantA)).toBe(true);
    expect(result.current.hasNextPage).toBe(true);
    await act(() => result.current.fetchNextPage());
    await waitFor(() => expect(result.current.data).toHaveLength(6), WAIT);
    const ids = result.current.data!.map((e) => e.id);
    expect(new Set(ids).size).toBe(6);
    expect([...ids].sort().reverse()).toEqual(ids);
  });

  it("usePublishEvent().mutate invalidates useEvents, which refetches with the new event", async () => {
    const { result } = renderHook(
      () => ({ events: useEvents({ event_type: "payment.#" }), publish: usePublishEvent(), stats: useEventStats() }),
      { wrapper: wrapper(env.operator) },
    );
    await waitFor(() => expect(result.current.events.isSuccess && result.current.stats.isSuccess).toBe(true), WAIT);
    const before = result.current.events.data!.length;
    const total = result.current.stats.data!.total;
    // 001's call, as written there
    act(() =>
      result.current.publish.mutate({
        event_type: "payment.completed",
        aggregate_type: "payment",
        aggregate_id: "P-react",
        payload: { payment_id: "P-react", amount: 5, currency: "RSD" },
        metadata: { source: "payment_form", timestamp: new Date().toISOString() },
      }),
    );
    await waitFor(() => expect(result.current.publish.isSuccess).toBe(true), WAIT);
    const id = result.current.publish.data!.id;
    await waitFor(() => expect(result.current.events.data![0]?.id).toBe(id), WAIT);
    expect(result.current.events.data!.length).toBe(before + 1);
    await waitFor(() => expect(result.current.stats.data!.total).toBe(total + 1), WAIT);
  });

  it("useEventStats gives 001's shape", async () => {
    const { result } = renderHook(() => useEventStats(), { wrapper: wrapper(env.reader) });
    await waitFor(() => expect(result.current.isSuccess).toBe(true), WAIT);
    const s = result.current.data!;
    expect(s.total).toBe(s.pending + s.processing + s.processed + s.failed);
    expect(s.failed).toBeGreaterThan(0);
  });

  it("useEvent shows one event; another tenant's is an error state", async () => {
    const mine = renderHook(() => useEvents({ event_type: "order.#" }, { limit: 1 }), { wrapper: wrapper(env.reader) });
    await waitFor(() => expect(mine.result.current.isSuccess).toBe(true), WAIT);
    const id = mine.result.current.data![0]!.id;
    const { result } = renderHook(() => useEvent(id), { wrapper: wrapper(env.reader) });
    await waitFor(() => expect(result.current.isSuccess).toBe(true), WAIT);
    expect(result.current.data!.logs.length).toBeGreaterThan(0);
    const other = renderHook(() => useEvent(env.eventB), { wrapper: wrapper(env.reader) });
    await waitFor(() => expect(other.result.current.isError).toBe(true), WAIT);
    expect(other.result.current.error).toMatchObject({ status: 404 });
  });

  it("useProcessPendingEvents().mutate(100) for an admin; a reader's 403 is an error state", async () => {
    const admin = renderHook(() => useProcessPendingEvents(), { wrapper: wrapper(env.admin) });
    act(() => admin.result.current.mutate(100));
    await waitFor(() => expect(admin.result.current.isSuccess).toBe(true), WAIT);
    expect(typeof admin.result.current.data!.attempted).toBe("number");
    const reader = renderHook(() => useProcessPendingEvents(), { wrapper: wrapper(env.reader) });
    act(() => reader.result.current.mutate(100));
    await waitFor(() => expect(reader.result.current.isError).toBe(true), WAIT);
    expect(reader.result.current.error).toMatchObject({ status: 403, code: "42501" });
  });

  it("useRetryDelivery re-arms a dead letter and useDeadLetters refetches without it", async () => {
    const { result } = renderHook(() => ({ dead: useDeadLetters({ event_type: "order.#" }, { limit: 500 }), retry: useRetryDelivery() }), {
      wrapper: wrapper(env.operator),
    });
    await waitFor(() => expect(result.current.dead.isSuccess).toBe(true), WAIT);
    const target = result.current.dead.data![0]!.delivery_id;
    const loadedAt = result.current.dead.dataUpdatedAt;
    act(() => result.current.retry.mutate(target));
    await waitFor(() => expect(result.current.retry.data?.retried).toBe(1), WAIT);
    // the mutation invalidated the list: it was fetched again
    await waitFor(() => expect(result.current.dead.dataUpdatedAt).toBeGreaterThan(loadedAt), WAIT);
  });

  it("useSubscriptions lists them", async () => {
    const { result } = renderHook(() => useSubscriptions(), { wrapper: wrapper(env.reader) });
    await waitFor(() => expect(result.current.isSuccess).toBe(true), WAIT);
    expect(result.current.data!.map((s) => s.handler_module)).toContain("fulfilment");
  });

  it("useEventStream sees an event committed after it mounted, and the list refetches with it", async () => {
    const { result } = renderHook(
      () => ({ stream: useEventStream({ event_type: "live.#" }), list: useEvents({ event_type: "live.#" }) }),
      { wrapper: wrapper(env.reader) },
    );
    await waitFor(() => expect(result.current.list.isSuccess).toBe(true), WAIT);
    await new Promise((r) => setTimeout(r, 1500));
    // published by another client (another tab, a trigger): only the stream can tell this one
    const pub = renderHook(() => usePublishEvent(), { wrapper: wrapper(env.operator) });
    act(() => pub.result.current.mutate({ event_type: "live.happened", aggregate_type: "live", payload: { n: 1 } }));
    await waitFor(() => expect(pub.result.current.isSuccess).toBe(true), WAIT);
    const id = pub.result.current.data!.id;
    await waitFor(() => expect(result.current.stream.events[0]?.id).toBe(id), WAIT);
    expect(result.current.stream.error).toBeNull();
    await waitFor(() => expect(result.current.list.data![0]?.id).toBe(id), WAIT);
  });
});
