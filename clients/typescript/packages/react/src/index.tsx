/**
 * @event-bus/react: TanStack Query v5 hooks over @event-bus/client. Design document 001's four hooks
 * work as it writes them — `useEvents({status, event_type, aggregate_type})`, `usePublishEvent().mutate({...})`,
 * `useProcessPendingEvents().mutate(100)`, `useEventStats()` giving `{pending, processing, processed, failed, total}` —
 * beside our own (`entity_type`, `completed`). Mutations invalidate the queries they change.
 */
import {
  useInfiniteQuery,
  useMutation,
  useQuery,
  useQueryClient,
  type InfiniteData,
  type QueryClient,
} from "@tanstack/react-query";
import { createContext, useContext, useEffect, useRef, useState, type ReactNode } from "react";
import type {
  DeadLetter,
  DeadLetterFilters,
  DeadLetterPage,
  Event,
  EventBusClient,
  EventBusError,
  EventFilters,
  EventPage,
  PublishEvent,
  RetryMatching,
  StatsQuery,
  StreamFilters,
} from "@event-bus/client";

export { createClient, EventBusError } from "@event-bus/client";
export type * from "@event-bus/client";

const ClientContext = createContext<EventBusClient | null>(null);

/** Gives the hooks below their client (inside a QueryClientProvider). */
export function EventBusProvider({ client, children }: { client: EventBusClient; children: ReactNode }) {
  return <ClientContext.Provider value={client}>{children}</ClientContext.Provider>;
}

export function useEventBusClient(): EventBusClient {
  const c = useContext(ClientContext);
  if (!c) throw new Error("useEventBusClient: wrap the tree in <EventBusProvider client={createClient(...)}>");
  return c;
}

/** The query keys, for invalidating or prefetching by hand. */
export const eventBusKeys = {
  all: ["event-bus"] as const,
  events: (filters?: object) => ["event-bus", "events", filters ?? {}] as const,
  event: (id: string) => ["event-bus", "event", id] as const,
  stats: (query?: object) => ["event-bus", "stats", query ?? {}] as const,
  deadLetters: (filters?: object) => ["event-bus", "dead-letters", filters ?? {}] as const,
  subscriptions: () => ["event-bus", "subscriptions"] as const,
  queue: () => ["event-bus", "queue"] as const,
};

/** What an event's outcome changes: every list, detail, count and queue of the bus. */
function invalidateEvents(qc: QueryClient) {
  return Promise.all([
    qc.invalidateQueries({ queryKey: ["event-bus", "events"] }),
    qc.invalidateQueries({ queryKey: ["event-bus", "event"] }),
    qc.invalidateQueries({ queryKey: ["event-bus", "stats"] }),
    qc.invalidateQueries({ queryKey: ["event-bus", "dead-letters"] }),
    qc.invalidateQueries({ queryKey: ["event-bus", "queue"] }),
  ]);
}

export interface ListOptions {
  /** Events per page (1-500, default 50). */
  limit?: number;
  enabled?: boolean;
  /** Refetch every n ms (TanStack Query's refetchInterval). */
  refetchInterval?: number;
}

/**
 * Events, newest first: `data` is the events loaded so far (an array, as in design document 001);
 * `fetchNextPage()` / `hasNextPage` page on with the API's cursor.
 */
export function useEvents(filters: EventFilters = {}, options: ListOptions = {}) {
  const client = useEventBusClient();
  const { limit, ...rest } = { ...filters, limit: options.limit ?? filters.limit };
  return useInfiniteQuery<EventPage, EventBusError, Event[], readonly unknown[], string | undefined>({
    queryKey: eventBusKeys.events({ ...rest, limit }),
    queryFn: ({ pageParam, signal }) => client.listEvents({ ...rest, limit, cursor: pageParam }, { signal }),
    initialPageParam: undefined,
    getNextPageParam: (last) => last.next_cursor ?? undefined,
    select: (d: InfiniteData<EventPage, string | undefined>) => d.pages.flatMap((p) => p.items),
    enabled: options.enabled,
    refetchInterval: options.refetchInterval,
  });
}

/** One event with its deliveries, attempt log and the events it caused. */
export function useEvent(id: string | null | undefined) {
  const client = useEventBusClient();
  return useQuery({
    queryKey: eventBusKeys.event(id ?? ""),
    queryFn: ({ signal }) => client.getEvent(id as string, { signal }),
    enabled: !!id,
  });
}

/** `{pending, processing, processed, completed, failed, total}` of the last 24 hours (or `window`). */
export function useEventStats(query: StatsQuery = {}, options: { refetchInterval?: number } = {}) {
  const client = useEventBusClient();
  return useQuery({
    queryKey: eventBusKeys.stats(query),
    queryFn: ({ signal }) => client.getStats(query, { signal }),
    refetchInterval: options.refetchInterval,
  });
}

/** `mutate({event_type, aggregate_type, aggregate_id, payload, metadata})`: publish (operators and admins). */
export function usePublishEvent() {
  const client = useEventBusClient();
  const qc = useQueryClient();
  return useMutation({
    mutationFn: (event: PublishEvent) => client.publishEvent(event),
    onSuccess: () => invalidateEvents(qc),
  });
}

/** `mutate(100)`: deliver up to that many due deliveries now (admins). */
export function useProcessPendingEvents() {
  const client = useEventBusClient();
  const qc = useQueryClient();
  return useMutation({
    mutationFn: (limit: number = 100) => client.processPendingEvents(limit),
    onSuccess: () => invalidateEvents(qc),
  });
}

/** Dead letters, newest first, paged like useEvents. */
export function useDeadLetters(filters: DeadLetterFilters = {}, options: ListOptions = {}) {
  const client = useEventBusClient();
  const { limit, ...rest } = { ...filters, limit: options.limit ?? filters.limit };
  return useInfiniteQuery<DeadLetterPage, EventBusError, DeadLetter[], readonly unknown[], string | undefined>({
    queryKey: eventBusKeys.deadLetters({ ...rest, limit }),
    queryFn: ({ pageParam, signal }) => client.listDeadLetters({ ...rest, limit, cursor: pageParam }, { signal }),
    initialPageParam: undefined,
    getNextPageParam: (last) => last.next_cursor ?? undefined,
    select: (d: InfiniteData<DeadLetterPage, string | undefined>) => d.pages.flatMap((p) => p.items),
    enabled: options.enabled,
    refetchInterval: options.refetchInterval,
  });
}

/** `mutate(deliveryId)`: re-arm one dead letter (operators, admins). */
export function useRetryDelivery() {
  const client = useEventBusClient();
  const qc = useQueryClient();
  return useMutation({
    mutationFn: (deliveryId: string) => client.retryDelivery(deliveryId),
    onSuccess: () => invalidateEvents(qc),
  });
}

/** `mutate(eventId)`: re-arm every dead delivery of one event ("resend"). */
export function useRetryEvent() {
  const client = useEventBusClient();
  const qc = useQueryClient();
  return useMutation({
    mutationFn: (eventId: string) => client.retryEvent(eventId),
    onSuccess: () => invalidateEvents(qc),
  });
}

/** `mutate({event_type: "invoice.#", dry_run: true})`: count, or re-arm, every matching dead letter. */
export function useRetryDeadLetters() {
  const client = useEventBusClient();
  const qc = useQueryClient();
  return useMutation({
    mutationFn: (match: RetryMatching) => client.retryDeadLetters(match),
    onSuccess: (r) => (r.dry_run ? undefined : invalidateEvents(qc)),
  });
}

/** `mutate(deliveryId)`: give up one dead letter. */
export function useSkipDelivery() {
  const client = useEventBusClient();
  const qc = useQueryClient();
  return useMutation({
    mutationFn: (deliveryId: string) => client.skipDelivery(deliveryId),
    onSuccess: () => invalidateEvents(qc),
  });
}

/** Subscriptions with their health. */
export function useSubscriptions(options: { refetchInterval?: number } = {}) {
  const client = useEventBusClient();
  return useQuery({
    queryKey: eventBusKeys.subscriptions(),
    queryFn: ({ signal }) => client.listSubscriptions({ signal }),
    refetchInterval: options.refetchInterval,
  });
}

/** `mutate({id, action: "pause" | "resume" | "reset-breaker"})`. */
export function useSubscriptionAction() {
  const client = useEventBusClient();
  const qc = useQueryClient();
  return useMutation({
    mutationFn: ({ id, action }: { id: string; action: "pause" | "resume" | "reset-breaker" }): Promise<unknown> =>
      action === "pause"
        ? client.pauseSubscription(id)
        : action === "resume"
          ? client.resumeSubscription(id)
          : client.resetBreaker(id),
    onSuccess: () =>
      Promise.all([
        qc.invalidateQueries({ queryKey: eventBusKeys.subscriptions() }),
        qc.invalidateQueries({ queryKey: eventBusKeys.queue() }),
      ]),
  });
}

/** The delivery queue now. */
export function useQueueSummary(options: { refetchInterval?: number } = {}) {
  const client = useEventBusClient();
  return useQuery({
    queryKey: eventBusKeys.queue(),
    queryFn: ({ signal }) => client.getQueue({ signal }),
    refetchInterval: options.refetchInterval,
  });
}

export interface EventStreamState {
  /** Events received since the hook mounted, newest first (at most `keep`). */
  events: Event[];
  /** The stream answered with an error (a bad filter, signed out). */
  error: EventBusError | Error | null;
}

/**
 * New events as they are committed, over the API's server-sent events. They also invalidate the lists
 * and counts they change (at most once per `invalidateMs`, 500), so useEvents / useEventStats refetch.
 * `onEvent` sees each event.
 */
export function useEventStream(
  filters: StreamFilters = {},
  options: { enabled?: boolean; keep?: number; onEvent?: (e: Event) => void; invalidateMs?: number } = {},
): EventStreamState {
  const client = useEventBusClient();
  const qc = useQueryClient();
  const [state, setState] = useState<EventStreamState>({ events: [], error: null });
  const onEvent = useRef(options.onEvent);
  onEvent.current = options.onEvent;
  const key = JSON.stringify(filters);
  const enabled = options.enabled ?? true;
  const keep = options.keep ?? 100;
  const invalidateMs = options.invalidateMs ?? 500;
  useEffect(() => {
    if (!enabled) return;
    const abort = new AbortController();
    // a busy bus sends many events a second: the lists and counts are refetched at most once per
    // `invalidateMs`, not once per event
    let pending: ReturnType<typeof setTimeout> | undefined;
    const invalidateSoon = () => {
      if (pending === undefined) {
        pending = setTimeout(() => {
          pending = undefined;
          void invalidateEvents(qc);
        }, invalidateMs);
      }
    };
    (async () => {
      try {
        for await (const e of client.streamEvents(JSON.parse(key) as StreamFilters, { signal: abort.signal })) {
          setState((s) => ({ events: [e, ...s.events].slice(0, keep), error: null }));
          onEvent.current?.(e);
          invalidateSoon();
        }
      } catch (err) {
        if (!abort.signal.aborted) setState((s) => ({ ...s, error: err as Error }));
      }
    })();
    return () => {
      abort.abort();
      if (pending !== undefined) clearTimeout(pending);
    };
  }, [client, qc, key, enabled, keep, invalidateMs]);
  return state;
}
