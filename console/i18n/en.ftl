# The Event Monitor, English. Every label the console shows comes from here (and sr.ftl).
app-title = Event Monitor
nav-overview = Overview
nav-events = Events
nav-dead = Dead letters
nav-subscriptions = Subscriptions
nav-parked = Parked streams
signed-in-as = Signed in as { $role }
role-admin = administrator
role-operator = operator
role-reader = reader
tenant-label = Tenant
all-tenants = all tenants
sign-out = Sign out
sign-in = Sign in
sign-in-title = Sign in to the Event Monitor
sign-in-help = Use your own PostgreSQL role and password.
username = User name
password = Password
language = Language
lang-en = English
lang-sr = Srpski

# errors and banners
err-login-failed = Wrong user name or password.
err-login-throttled = Too many sign-in attempts. Wait a minute and try again.
err-login-not-allowed = This role may not use the console: it is not a member of event_bus_reader, event_bus_operator or event_bus_admin, or the console's database role cannot act as it.
err-session-expired = Your session has expired. Sign in again.
err-forbidden = You may not do this: your role lacks the privilege.
err-csrf = The form was stale or forged. Reload the page and try again.
err-not-found = Not found: it may belong to another tenant, or retention may have deleted it.
err-bad-input = Invalid input: { $detail }
err-db-down = The database cannot be reached. The console retries by itself; this page refreshes when it is back.
err-db = The database refused: { $detail }
err-not-uuid = { $what } "{ $value }" is not a UUID
err-not-time = { $what } "{ $value }" is not a date and time
err-too-long = the { $what } filter is { $length } characters long: at most { $max } characters
err-status = status "{ $value }": use pending, processing, completed or failed
err-window = window "{ $value }": use 1h, 24h or 7d
err-limit = the limit must be a whole number
err-from-after-to = "from" ({ $from }) is later than "to" ({ $to }): no event can match
err-api-two-names = { $first } and { $second } name the same thing and differ: give one of them
err-api-limit = limit { $value } is out of range: give 1 to { $max }
err-api-after-stream = "after" belongs to the stream (/api/v1/events/stream); pages use "cursor"
err-api-stream-page = the stream takes no "cursor" or "limit": it sends every new event; use "after" to resume
field-window = window
field-event = event
field-subscription = subscription
field-delivery = delivery
field-page = page
field-tenant = tenant
field-source = source module
field-type = event type
field-entity_type = entity type
field-entity_id = entity id
field-correlation = correlation
field-from = from
field-to = to
field-after = after
err-page-missing = There is no such page.
back = Back

# overview
overview-title = Overview
window = Window
window-1h = 1 hour
window-24h = 24 hours
window-7d = 7 days
count-pending = Pending
count-processing = Processing
count-completed = Completed
count-failed = Failed
count-total = Total
chart-title = Delivery attempts
chart-succeeded = succeeded
chart-failed = failed
chart-empty = No delivery attempts in this window.
counted-at = Counted at
queue-depth = Queue depth (due now)
oldest-due = Oldest due
undispatched = Not yet fanned out
dead-letters = Dead letters
parked-streams = Parked streams
open-breakers = Open breakers
process-pending = Process pending now
process-pending-help = Deliver up to this many due events now, in this request, instead of waiting for the worker.
process-pending-done = { $count ->
    [one] Processed { $shown } event.
   *[other] Processed { $shown } events.
}
seconds = { $n } s
milliseconds = { $n } ms

# events
events-title = Events
filter = Filter
filter-clear = Clear
source-module = Source module
event-type = Event type
event-type-help = A pattern: * one word, # any number
status = Status
any = any
from = From
to = To
entity-type = Entity type
entity-id = Entity ID
correlation-id = Correlation ID
tenant = Tenant
created = Created
event = Event
next-page = Older
first-page = Newest
no-events = No events match.
live-tail = Live tail
live-pause = Pause
live-resume = Resume
live-new = { $shown } new

# statuses
status-pending = pending
status-processing = processing
status-completed = completed
status-failed = failed
status-skipped = skipped
status-held = held
status-waiting = waiting
status-closed = closed
status-open = open
status-half_open = half open

# event detail
event-title = Event { $id }
payload = Payload
metadata = Metadata
causation = Causation
parent-event = Parent event
child-events = Caused events
none = none
deliveries = Deliveries
subscription = Subscription
handler = Handler
kind = Kind
pattern = Pattern
attempts = Attempts
next-attempt = Next attempt
last-attempt = Last attempt
http-status = HTTP status
error = Error
completed-at = Completed
attempt-log = Attempt log
attempt = Attempt
duration = Duration
response = Response
executed-at = Time
no-attempts = No attempts yet.
retry = Retry
retry-event-help = Deliver the failed deliveries of this event again, with a fresh retry budget.
retried = { $count ->
    [one] Re-armed { $shown } delivery.
   *[other] Re-armed { $shown } deliveries.
}
replay = Replay
replay-help = Deliver this event to this subscription again.
replayed = { $count ->
    [one] Replayed { $shown } delivery.
   *[other] Replayed { $shown } deliveries.
}
skip = Skip
skipped = Skipped the delivery.

# dead letters
dead-title = Dead letters
dead-at = Dead since
retry-matching = Retry all matching
retry-matching-preview = { $count ->
    [one] { $shown } failed delivery matches this filter.
   *[other] { $shown } failed deliveries match this filter.
}
retry-matching-confirm = { $count ->
    [one] Retry this one
   *[other] Retry these { $shown }
}
no-dead = No dead letters.

# subscriptions
subs-title = Subscriptions
active = Active
yes = yes
no = no
breaker = Breaker
consecutive-failures = Consecutive failures
failures-1h = Failures (1 h)
attempts-1h = Attempts (1 h)
last-error = Last error
last-success = Last success
secret = Signing secret
target = Target
reset-breaker = Reset breaker
breaker-reset = { $count ->
    [one] Breaker reset; { $shown } held delivery released.
   *[other] Breaker reset; { $shown } held deliveries released.
}
pause = Pause
resume = Resume
paused = Paused.
resumed = Resumed.
no-subs = No subscriptions.
save = Save
sub-filter = Content filter
filter-placeholder = e.g. $.payload.total > 10000
filter-saved = Filter saved.
filter-errors = { $count ->
    [one] { $shown } event the filter could not be evaluated on
   *[other] { $shown } events the filter could not be evaluated on
}
filter-errors-title = Such events get no delivery (an error counts as no match). Test the filter with event_bus.matches_filter(filter, event_id).

# parked
parked-title = Parked streams
entity = Entity
waiting = Waiting
blocking-delivery = Blocking delivery
parked-at = Parked since
no-parked = No parked streams.
