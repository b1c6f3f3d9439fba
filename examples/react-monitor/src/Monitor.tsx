// Design document 001's "Event Bus Monitor": statistics, the last 100 events with status badges and
// filters, one event's payload and attempt log, and "process pending" — only @event-bus/react's hooks.
import { useState } from "react";
import {
  useEvent,
  useEvents,
  useEventStats,
  useEventStream,
  useProcessPendingEvents,
  useRetryEvent,
  type EventFilters,
} from "@event-bus/react";

const STATUSES = ["pending", "processing", "processed", "failed"] as const;

export function Monitor() {
  const [filters, setFilters] = useState<EventFilters>({});
  const [selected, setSelected] = useState<string | null>(null);
  const stats = useEventStats({}, { refetchInterval: 10_000 });
  const events = useEvents(filters, { limit: 100 });
  const process = useProcessPendingEvents();
  const live = useEventStream(filters);

  return (
    <main>
      <header>
        <h1>Event Bus Monitor</h1>
        <button onClick={() => process.mutate(100)} disabled={process.isPending}>
          {process.isPending ? "Processing…" : "Process pending"}
        </button>
        {process.isSuccess && <span className="note">{process.data.attempted} deliveries attempted</span>}
        {process.isError && <span className="error">{process.error.message}</span>}
      </header>

      <section className="cards" aria-label="Last 24 hours">
        {(["pending", "processing", "processed", "failed", "total"] as const).map((k) => (
          <div key={k} className={`card ${k}`}>
            <div className="label">{k}</div>
            <div className="value" data-stat={k}>
              {stats.data ? stats.data[k].toLocaleString() : "…"}
            </div>
          </div>
        ))}
      </section>

      <form className="filters" onSubmit={(e) => e.preventDefault()}>
        <label>
          Status
          <select
            value={filters.status ?? ""}
            onChange={(e) =>
              setFilters({ ...filters, status: (e.target.value || undefined) as EventFilters["status"] })
            }
          >
            <option value="">any</option>
            {STATUSES.map((s) => (
              <option key={s} value={s}>
                {s}
              </option>
            ))}
          </select>
        </label>
        <label>
          Event type
          <input
            placeholder="invoice.*"
            value={filters.event_type ?? ""}
            onChange={(e) => setFilters({ ...filters, event_type: e.target.value || undefined })}
          />
        </label>
        <label>
          Aggregate type
          <input
            value={filters.aggregate_type ?? ""}
            onChange={(e) => setFilters({ ...filters, aggregate_type: e.target.value || undefined })}
          />
        </label>
        <span className="note">{live.events.length > 0 && `${live.events.length} new since opened`}</span>
      </form>

      <div className="split">
        <section>
          <h2>Last 100 events</h2>
          {events.isError && <p className="error">{events.error.message}</p>}
          <table data-ready={events.isSuccess ? "" : undefined}>
            <thead>
              <tr>
                <th>Created</th>
                <th>Event type</th>
                <th>Aggregate</th>
                <th>Status</th>
              </tr>
            </thead>
            <tbody>
              {events.data?.map((e) => (
                <tr key={e.id} className={e.id === selected ? "selected" : undefined} onClick={() => setSelected(e.id)}>
                  <td>{new Date(e.created_at).toLocaleString()}</td>
                  <td>
                    <code>{e.event_type}</code>
                  </td>
                  <td>
                    {e.entity_type} <code>{e.entity_id}</code>
                  </td>
                  <td>
                    <span className={`badge ${e.status}`}>{e.status}</span>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </section>
        <section>{selected ? <Detail id={selected} /> : <p className="note">Select an event.</p>}</section>
      </div>
    </main>
  );
}

function Detail({ id }: { id: string }) {
  const detail = useEvent(id);
  const retry = useRetryEvent();
  if (detail.isError) return <p className="error">{detail.error.message}</p>;
  if (!detail.data) return <p className="note">Loading…</p>;
  const { event, deliveries, logs } = detail.data;
  return (
    <div className="detail" data-detail={event.id}>
      <h2>
        <code>{event.event_type}</code> <span className={`badge ${event.status}`}>{event.status}</span>
      </h2>
      {deliveries.some((d) => d.status === "failed") && (
        <button onClick={() => retry.mutate(event.id)} disabled={retry.isPending}>
          Retry failed deliveries
        </button>
      )}
      <h3>Payload</h3>
      <pre>{JSON.stringify(event.payload, null, 2)}</pre>
      <h3>Deliveries</h3>
      <ul>
        {deliveries.map((d) => (
          <li key={d.delivery_id}>
            {d.handler_module} <span className={`badge ${d.status}`}>{d.status}</span> · {d.attempts} attempt(s)
            {d.last_error && <div className="error">{d.last_error}</div>}
          </li>
        ))}
      </ul>
      <h3>Attempt log</h3>
      <table>
        <tbody>
          {logs.map((l) => (
            <tr key={l.id}>
              <td>{new Date(l.executed_at).toLocaleTimeString()}</td>
              <td>#{l.attempt}</td>
              <td>
                <span className={`badge ${l.status === "success" ? "completed" : "failed"}`}>{l.status}</span>
              </td>
              <td>{l.http_status}</td>
              <td>{l.duration_ms?.toFixed(1)} ms</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
