/**
 * @event-bus/client: the event_bus console's JSON API (/api/v1), typed from its OpenAPI document
 * (`schema.ts` is generated from `openapi.json` by openapi-typescript; nothing here restates a type).
 * Fetch-based: browsers, Node 18+, Deno and Supabase Edge Functions.
 */
import type { components, operations } from "./schema.js";

export type { components, operations, paths } from "./schema.js";

type Schemas = components["schemas"];
export type Event = Schemas["Event"];
export type EventPage = Schemas["EventPage"];
export type EventDetail = Schemas["EventDetail"];
export type EventStats = Schemas["EventStats"];
export type EventStatus = Schemas["EventStatus"];
export type DeliveryStatus = Schemas["DeliveryStatus"];
export type Delivery = Schemas["Delivery"];
export type Attempt = Schemas["Attempt"];
export type PublishEvent = Schemas["PublishEvent"];
export type Published = Schemas["Published"];
export type Processed = Schemas["Processed"];
export type Retried = Schemas["Retried"];
export type Skipped = Schemas["Skipped"];
export type DeadLetter = Schemas["DeadLetter"];
export type DeadLetterPage = Schemas["DeadLetterPage"];
export type RetryMatching = Schemas["RetryMatching"];
export type RetryCount = Schemas["RetryCount"];
export type Subscription = Schemas["Subscription"];
export type Changed = Schemas["Changed"];
export type BreakerReset = Schemas["BreakerReset"];
export type QueueSummary = Schemas["QueueSummary"];
export type SessionInfo = Schemas["SessionInfo"];
export type ApiErrorBody = Schemas["ApiError"];

type Query<O extends keyof operations> = operations[O]["parameters"] extends { query?: infer Q }
  ? NonNullable<Q>
  : never;
/** The events list's filters (design document 001's `aggregate_type`, `processed` included). */
export type EventFilters = Omit<Query<"listEvents">, "cursor" | "after">;
export type StatsQuery = Query<"getEventStats">;
export type DeadLetterFilters = Omit<Query<"listDeadLetters">, "cursor">;
export type StreamFilters = Omit<Query<"streamEvents">, "cursor" | "limit">;

type MaybePromise<T> = T | Promise<T>;

export interface ClientOptions {
  /** The console's address, e.g. `https://events.example.com` (no trailing `/api/v1`). */
  baseUrl: string;
  /**
   * The bearer token, or a function giving the current one (called before every request, so a
   * refreshed session's token is used: e.g. `async () => (await supabase.auth.getSession()).data.session?.access_token`).
   */
  token?: string | (() => MaybePromise<string | null | undefined>);
  /** With the console's session cookie instead of a token: the CSRF token (GET /api/v1/session) for POSTs. */
  csrfToken?: string | (() => MaybePromise<string | null | undefined>);
  /** `include` to send the console's session cookie from another origin. */
  credentials?: RequestCredentials;
  /** A fetch of your own (tests, instrumentation); the global one by default. */
  fetch?: typeof fetch;
}

/** An error answer of the API: its HTTP status and `{code, message, hint}`. */
export class EventBusError extends Error {
  readonly status: number;
  /** The SQLSTATE where the database refused (`22023`, `42501`, ...), else the console's code. */
  readonly code: string;
  readonly hint: string | null;
  constructor(status: number, body: ApiErrorBody) {
    super(body.message);
    this.name = "EventBusError";
    this.status = status;
    this.code = body.code;
    this.hint = body.hint ?? null;
  }
}

async function resolve(v: ClientOptions["token"]): Promise<string | null | undefined> {
  return typeof v === "function" ? await v() : v;
}

function queryString(q: object | undefined): string {
  if (!q) return "";
  const s = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) {
    if (v !== undefined && v !== null && v !== "") s.append(k, String(v));
  }
  const t = s.toString();
  return t ? `?${t}` : "";
}

/** Every call of the API, typed by the OpenAPI document. */
export interface EventBusClient {
  listEvents(filters?: EventFilters & { cursor?: string }, init?: RequestInit): Promise<EventPage>;
  getEvent(id: string, init?: RequestInit): Promise<EventDetail>;
  getStats(query?: StatsQuery, init?: RequestInit): Promise<EventStats>;
  publishEvent(event: PublishEvent, init?: RequestInit): Promise<Published>;
  processPendingEvents(limit?: number, init?: RequestInit): Promise<Processed>;
  retryEvent(id: string, init?: RequestInit): Promise<Retried>;
  listDeadLetters(filters?: DeadLetterFilters & { cursor?: string }, init?: RequestInit): Promise<DeadLetterPage>;
  retryDeadLetters(match: RetryMatching, init?: RequestInit): Promise<RetryCount>;
  retryDelivery(deliveryId: string, init?: RequestInit): Promise<Retried>;
  skipDelivery(deliveryId: string, init?: RequestInit): Promise<Skipped>;
  listSubscriptions(init?: RequestInit): Promise<Subscription[]>;
  pauseSubscription(id: string, init?: RequestInit): Promise<Changed>;
  resumeSubscription(id: string, init?: RequestInit): Promise<Changed>;
  resetBreaker(id: string, init?: RequestInit): Promise<BreakerReset>;
  getQueue(init?: RequestInit): Promise<QueueSummary>;
  getSession(init?: RequestInit): Promise<SessionInfo>;
  /**
   * New events as they are committed (server-sent events read with fetch, so the bearer token is
   * sent): `for await (const e of client.streamEvents({ event_type: "invoice.#" }, { signal }))`.
   * Reconnects after a dropped connection or a 5xx answer, resuming after the last event it gave
   * (`Last-Event-ID`); ends when `signal` aborts. A 4xx answer (bad filter, signed out) is thrown as
   * EventBusError.
   */
  streamEvents(filters?: StreamFilters, options?: StreamOptions): AsyncIterable<Event>;
}

export interface StreamOptions {
  signal?: AbortSignal;
  /** Start after this event id (default: from now on). */
  after?: string;
  /** Milliseconds to wait before reconnecting (default 1000). */
  retryMs?: number;
}

export function createClient(options: ClientOptions): EventBusClient {
  const base = options.baseUrl.replace(/\/+$/, "") + "/api/v1";
  const doFetch: typeof fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));

  async function headers(write: boolean, extra?: HeadersInit): Promise<Headers> {
    const h = new Headers(extra);
    h.set("Accept", "application/json");
    const token = await resolve(options.token);
    if (token) h.set("Authorization", `Bearer ${token}`);
    if (write) {
      h.set("Content-Type", "application/json");
      const csrf = await resolve(options.csrfToken);
      if (csrf) h.set("X-CSRF-Token", csrf);
    }
    return h;
  }

  async function call<T>(method: "GET" | "POST", path: string, body?: unknown, init?: RequestInit): Promise<T> {
    const r = await doFetch(base + path, {
      ...init,
      method,
      credentials: options.credentials ?? init?.credentials,
      headers: await headers(method === "POST", init?.headers),
      body: method === "POST" ? JSON.stringify(body ?? {}) : undefined,
    });
    const text = await r.text();
    let json: unknown;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      throw new EventBusError(r.status, { code: "not_json", message: `${method} ${path}: ${r.status} ${text.slice(0, 200)}`, hint: null });
    }
    if (!r.ok) {
      const b = json as Partial<ApiErrorBody> | undefined;
      throw new EventBusError(r.status, {
        code: b?.code ?? String(r.status),
        message: b?.message ?? `${method} ${path}: ${r.status}`,
        hint: b?.hint ?? null,
      });
    }
    return json as T;
  }

  const id = encodeURIComponent;

  return {
    listEvents: (f, init) => call("GET", `/events${queryString(f)}`, undefined, init),
    getEvent: (e, init) => call("GET", `/events/${id(e)}`, undefined, init),
    getStats: (q, init) => call("GET", `/stats${queryString(q)}`, undefined, init),
    publishEvent: (e, init) => call("POST", "/events", e, init),
    processPendingEvents: (limit, init) => call("POST", "/process-pending", { limit: limit ?? 100 }, init),
    retryEvent: (e, init) => call("POST", `/events/${id(e)}/retry`, undefined, init),
    listDeadLetters: (f, init) => call("GET", `/dead-letters${queryString(f)}`, undefined, init),
    retryDeadLetters: (m, init) => call("POST", "/dead-letters/retry", m, init),
    retryDelivery: (d, init) => call("POST", `/deliveries/${id(d)}/retry`, undefined, init),
    skipDelivery: (d, init) => call("POST", `/deliveries/${id(d)}/skip`, undefined, init),
    listSubscriptions: (init) => call("GET", "/subscriptions", undefined, init),
    pauseSubscription: (s, init) => call("POST", `/subscriptions/${id(s)}/pause`, undefined, init),
    resumeSubscription: (s, init) => call("POST", `/subscriptions/${id(s)}/resume`, undefined, init),
    resetBreaker: (s, init) => call("POST", `/subscriptions/${id(s)}/reset-breaker`, undefined, init),
    getQueue: (init) => call("GET", "/queue", undefined, init),
    getSession: (init) => call("GET", "/session", undefined, init),
    streamEvents: (filters, opts) => stream(filters, opts ?? {}),
  };

  async function* stream(filters: StreamFilters | undefined, opts: StreamOptions): AsyncGenerator<Event> {
    let last = opts.after;
    const signal = opts.signal;
    while (!signal?.aborted) {
      let r: Response;
      try {
        const h = await headers(false);
        h.set("Accept", "text/event-stream");
        if (last) h.set("Last-Event-ID", last);
        r = await doFetch(base + `/events/stream${queryString(filters)}`, {
          headers: h,
          signal,
          credentials: options.credentials,
        });
      } catch (e) {
        if (signal?.aborted) return;
        await sleep(opts.retryMs ?? 1000, signal);
        continue;
      }
      if (r.status >= 500) {
        // the console or its database is away for a moment: try again, as after a dropped connection
        await r.body?.cancel().catch(() => {});
        await sleep(opts.retryMs ?? 1000, signal);
        continue;
      }
      if (!r.ok || !r.body) {
        const body = (await r.json().catch(() => undefined)) as Partial<ApiErrorBody> | undefined;
        throw new EventBusError(r.status, {
          code: body?.code ?? String(r.status),
          message: body?.message ?? `the stream answered ${r.status}`,
          hint: body?.hint ?? null,
        });
      }
      try {
        for await (const msg of serverSentEvents(r.body, signal)) {
          if (msg.event === "event") {
            const e = JSON.parse(msg.data) as Event;
            last = msg.id ?? e.id;
            yield e;
          } else if (msg.event === "signed-out") {
            throw new EventBusError(401, { code: "unauthenticated", message: "The session or token has expired.", hint: null });
          }
        }
      } catch (e) {
        if (e instanceof EventBusError) throw e;
        if (signal?.aborted) return;
      }
      await sleep(opts.retryMs ?? 1000, signal);
    }
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((done) => {
    const t = setTimeout(done, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(t);
      done();
    });
  });
}

interface Message {
  event: string;
  data: string;
  id?: string;
}

/** The messages of a text/event-stream body (the WHATWG format: fields, blank-line separated). */
async function* serverSentEvents(body: ReadableStream<Uint8Array>, signal?: AbortSignal): AsyncGenerator<Message> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  const onAbort = () => void reader.cancel().catch(() => {});
  signal?.addEventListener("abort", onAbort);
  let buffer = "";
  let msg: Message = { event: "message", data: "" };
  let hasData = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let nl: number;
      while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + (buffer.startsWith("\r\n", nl) ? 2 : 1));
        if (line === "") {
          if (hasData) yield msg;
          msg = { event: "message", data: "" };
          hasData = false;
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") msg.event = value;
        else if (field === "data") {
          msg.data = hasData ? `${msg.data}\n${value}` : value;
          hasData = true;
        } else if (field === "id") msg.id = value;
      }
    }
  } finally {
    signal?.removeEventListener("abort", onAbort);
    reader.releaseLock();
  }
}
