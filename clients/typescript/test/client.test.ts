import { describe, expect, it } from "vitest";
import { EventBusError } from "@event-bus/client";
import { as, env, eventually } from "./env";

describe("@event-bus/client against a real console", () => {
  it("lists a tenant's events with filters and pages with the cursor", async () => {
    const reader = as(env.reader);
    const first = await reader.listEvents({ event_type: "order.#", limit: 4 });
    expect(first.items).toHaveLength(4);
    expect(first.items.every((e) => e.tenant_id === env.tenantA)).toBe(true);
    const all = [...first.items];
    let cursor = first.next_cursor ?? undefined;
    while (cursor) {
      const page = await reader.listEvents({ event_type: "order.#", limit: 4, cursor });
      all.push(...page.items);
      cursor = page.next_cursor ?? undefined;
    }
    const whole = await reader.listEvents({ event_type: "order.#", limit: 500 });
    expect(all.map((e) => e.id)).toEqual(whole.items.map((e) => e.id));
    const ids = all.map((e) => e.id);
    expect([...ids].sort().reverse()).toEqual(ids);
    // design document 001's names
    const byAggregate = await reader.listEvents({ aggregate_type: "order", aggregate_id: "O-3" });
    expect(byAggregate.items.map((e) => e.entity_id)).toEqual(["O-3"]);
    const failed = await reader.listEvents({ status: "failed", event_type: "order.#", limit: 500 });
    expect(failed.items.length).toBe(whole.items.length);
  });

  it("gives one event with its deliveries and log, and 404 for another tenant's", async () => {
    const reader = as(env.reader);
    const [e] = (await reader.listEvents({ event_type: "order.#", limit: 1 })).items;
    const d = await reader.getEvent(e!.id);
    expect(d.event.id).toBe(e!.id);
    expect(d.deliveries[0]?.status).toBe("failed");
    expect(d.logs.length).toBeGreaterThan(0);
    const err = await reader.getEvent(env.eventB).catch((x) => x);
    expect(err).toBeInstanceOf(EventBusError);
    expect(err.status).toBe(404);
    expect(err.code).toBe("not_found");
  });

  it("publishes as an operator and refuses a reader with the database's reason", async () => {
    const id = (await as(env.operator).publishEvent({
      event_type: "payment.completed",
      aggregate_type: "payment",
      aggregate_id: "P-1",
      payload: { amount: 10 },
    })).id;
    const d = await as(env.reader).getEvent(id);
    expect(d.event).toMatchObject({ event_type: "payment.completed", entity_type: "payment", entity_id: "P-1", payload: { amount: 10 } });
    const refused = await as(env.reader).publishEvent({ event_type: "payment.completed", aggregate_type: "payment" }).catch((x) => x);
    expect(refused).toBeInstanceOf(EventBusError);
    expect([refused.status, refused.code]).toEqual([403, "42501"]);
    expect(refused.hint).toContain("event_bus_operator");
    const bad = await as(env.operator).publishEvent({ event_type: "a..b", aggregate_type: "x" }).catch((x) => x);
    expect([bad.status, bad.code]).toEqual([400, "22023"]);
  });

  it("counts, retries and skips dead letters", async () => {
    const operator = as(env.operator);
    const dead = await operator.listDeadLetters({ event_type: "order.#", limit: 500 });
    expect(dead.items.length).toBeGreaterThan(2);
    const dry = await operator.retryDeadLetters({ event_type: "order.#", dry_run: true });
    expect(dry).toEqual({ count: dead.items.length, dry_run: true });
    expect((await operator.retryDelivery(dead.items[0]!.delivery_id)).retried).toBe(1);
    expect((await operator.skipDelivery(dead.items[1]!.delivery_id)).skipped).toBe(true);
    const again = await operator.skipDelivery(dead.items[1]!.delivery_id).catch((x) => x);
    expect([again.status, again.code]).toEqual([409, "55000"]);
  });

  it("streams an event committed after the stream opened", async () => {
    const abort = new AbortController();
    const it = as(env.reader).streamEvents({ event_type: "stream.#" }, { signal: abort.signal })[Symbol.asyncIterator]();
    const next = it.next();
    // the stream starts from now on: publish until it has surely started
    await new Promise((r) => setTimeout(r, 1500));
    const { id } = await as(env.operator).publishEvent({ event_type: "stream.tested", aggregate_type: "stream", payload: { n: 1 } });
    const got = await Promise.race([next, new Promise((_, no) => setTimeout(() => no(new Error("no event in 30 s")), 30_000))]);
    expect((got as IteratorResult<{ id: string }>).value.id).toBe(id);
    abort.abort();
    await eventually("the stream to end", async () => (await it.next()).done);
  });

  it("gives the session, stats, subscriptions and queue; admins process pending", async () => {
    expect(await as(env.reader).getSession()).toMatchObject({ level: "reader", tenant_id: env.tenantA, csrf_token: "" });
    const stats = await as(env.reader).getStats();
    expect(Object.keys(stats).sort()).toEqual(["completed", "failed", "pending", "processed", "processing", "total", "window"]);
    expect(stats.total).toBe(stats.pending + stats.processing + stats.processed + stats.failed);
    expect((await as(env.reader).listSubscriptions()).length).toBeGreaterThan(0);
    expect((await as(env.admin).getQueue()).dead_letters).toBeGreaterThan(0);
    expect(typeof (await as(env.admin).processPendingEvents(10)).attempted).toBe("number");
    const refused = await as(env.reader).processPendingEvents(10).catch((x) => x);
    expect(refused.status).toBe(403);
  });

  it("streams on through a 503 and throws a 400", async () => {
    // the console answers 503 once (its database restarting), then is there again
    let calls = 0;
    const flaky: typeof fetch = async (input, init) => {
      calls += 1;
      if (calls === 1) return new Response(JSON.stringify({ code: "unavailable", message: "x", hint: null }), { status: 503 });
      return fetch(input, init);
    };
    const abort = new AbortController();
    const reader = (await import("@event-bus/client")).createClient({ baseUrl: env.url, token: env.reader, fetch: flaky });
    const it = reader.streamEvents({ event_type: "flaky.#" }, { signal: abort.signal, retryMs: 100 })[Symbol.asyncIterator]();
    const next = it.next();
    await new Promise((r) => setTimeout(r, 1500));
    const { id } = await as(env.operator).publishEvent({ event_type: "flaky.tested", aggregate_type: "flaky" });
    const got = await Promise.race([next, new Promise((_, no) => setTimeout(() => no(new Error("no event in 30 s")), 30_000))]);
    expect((got as IteratorResult<{ id: string }>).value.id).toBe(id);
    expect(calls).toBeGreaterThanOrEqual(2);
    abort.abort();
    const bad = as(env.reader).streamEvents({ event_type: "a..b" })[Symbol.asyncIterator]();
    const err = await bad.next().catch((x) => x);
    expect([err.status, err.code]).toEqual([400, "22023"]);
  });

  it("takes a fresh token from the provider on every call", async () => {
    let calls = 0;
    const c = (await import("@event-bus/client")).createClient({
      baseUrl: env.url,
      token: async () => {
        calls += 1;
        return env.reader;
      },
    });
    await c.getSession();
    await c.getSession();
    expect(calls).toBe(2);
    const none = (await import("@event-bus/client")).createClient({ baseUrl: env.url, token: () => undefined });
    const err = await none.getSession().catch((x) => x);
    expect([err.status, err.code]).toEqual([401, "unauthenticated"]);
  });
});
