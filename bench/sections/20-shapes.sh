# shellcheck shell=bash
# Sourced by bench/run.sh: fan-out, ordered subscriptions, isolation (bursts, a hanging endpoint, a
# failing neighbour) and a sustained stream of commits.
# It uses run.sh's helpers and variables (want, throughput_median, ratio, ROWS, ...).

# --- fan-out: one event to 10 subscriptions ----------------------------------------------
if want fanout; then
    one="${MED[http_10000]:-$(throughput_median "fan-out baseline, 1 subscription" "$SINK" 10000 1)}"
    ten="$(throughput_median "fan-out 10 subscriptions" "$SINK" 10000 10)"
    ROWS+=("| HTTP deliveries/s, 10,000 events x 10 subscriptions | $ten | 1 subscription $one | $(ratio "$ten" "$one") | >= 0.8 |")
fi

# --- content filters: 10 subscriptions each selecting half the events, beside 10 unfiltered ones
# receiving as many deliveries (twice the events, each filter evaluated on every event in the fan-out);
# and beside 5 unfiltered subscriptions getting the same events and deliveries (the filters' own cost)
if want filters; then
    FLT_N="${FILTER_EVENTS:-10000}"
    plain="$(throughput_median "10 unfiltered subscriptions, $FLT_N events" "$SINK" "$FLT_N" 10)"
    spread="$(throughput_median "10 filtered subscriptions (a different half each), $((FLT_N * 2)) events" "$SINK" "$((FLT_N * 2))" 10 filtered=spread)"
    same="$(throughput_median "10 filtered subscriptions (the same half), $((FLT_N * 2)) events" "$SINK" "$((FLT_N * 2))" 10 filtered)"
    ROWS+=("| HTTP deliveries/s, $((FLT_N * 2)) events x 10 subscriptions with a filter selecting half (each event to 5) | $spread | 10 unfiltered, $FLT_N events (as many deliveries) $plain | $(ratio "$spread" "$plain") | >= 0.8 |")
    ROWS+=("| (same) every filter selecting the same half (half the events to 10, half to none) | $same | 10 unfiltered, $FLT_N events $plain | $(ratio "$same" "$plain") | >= 0.8 |")
    # the filters' own cost: the same events and deliveries without them (5 unfiltered subscriptions)
    five="$(throughput_median "5 unfiltered subscriptions, $((FLT_N * 2)) events" "$SINK" "$((FLT_N * 2))" 5)"
    ROWS+=("| (same) each event to 5 of 10 filtered subscriptions, beside 5 unfiltered: the same events and deliveries | $spread | 5 unfiltered, $((FLT_N * 2)) events $five | $(ratio "$spread" "$five") | - |")
fi

# --- ordered subscriptions: the same events to an ordered subscription and to an unordered one --
if want ordered; then
    ORD_N="${ORDERED_EVENTS:-20000}"
    ORD_ENT="${ORDERED_ENTITIES:-1000}"
    MED[unord]="$(throughput_median "unordered, $ORD_ENT entities" "$SINK" "$ORD_N" 1 "entities=$ORD_ENT")"
    MED[ord]="$(throughput_median "ordered, $ORD_ENT entities" "$SINK" "$ORD_N" 1 ordered "entities=$ORD_ENT")"
    ROWS+=("| ordered-subscription deliveries/s, $ORD_N events over $ORD_ENT entities | ${MED[ord]} | unordered ${MED[unord]} | $(ratio "${MED[ord]}" "${MED[unord]}") | - |")
fi

# --- isolation: bursts of unmatched events, a hanging endpoint, a failing neighbour -----------
latency_runs() { # extra driver options -> "p50 p99" medians
    local p50s=() p99s=() out
    for r in $(seq "$RUNS"); do
        out="$("$DRIVER" latency "$CONN" "$LAT_EVENTS" 0 "$@")"
        echo "    latency ($*) run $r: $out" >&2
        p50s+=("$(sed -n 's/.*p50_ms=\([0-9.]*\).*/\1/p' <<<"$out")")
        p99s+=("$(sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p' <<<"$out")")
    done
    echo "$(printf '%s\n' "${p50s[@]}" | median) $(printf '%s\n' "${p99s[@]}" | median)"
}
if want isolation; then
    UNM_N="${UNMATCHED_EVENTS:-100000}"
    rates=(); probes=()
    for r in $(seq "$RUNS"); do
        out="$("$DRIVER" unmatched "$CONN" "$UNM_N")"
        echo "    unmatched run $r: $out"
        rates+=("$(sed -n 's/.*unmatched_per_s=\([0-9.]*\).*/\1/p' <<<"$out")")
        probes+=("$(sed -n 's/.*probe_ms=\([0-9.]*\).*/\1/p' <<<"$out")")
    done
    ur="$(printf '%s\n' "${rates[@]}" | median)"; up="$(printf '%s\n' "${probes[@]}" | median)"
    http="${MED[http_100000]:-${MED[http_10000]:-}}"
    ROWS+=("| events matching nothing completed/s, $UNM_N events | $ur | HTTP deliveries/s ${http:--} | $(ratio "$ur" "${http:-0}") | - |")
    ROWS+=("| commit -> handler ms, one matched event emitted behind them | $up | idle p50 ${MED[p50_0]:--} | | < 2000 |")
    read -r idle50 idle99 <<<"$(if [ -n "${MED[p50_0]:-}" ]; then echo "${MED[p50_0]} ${MED[p99_0]}"; else latency_runs; fi)"
    read -r hang50 hang99 <<<"$(latency_runs hang=500)"
    ROWS+=("| commit -> handler p50 ms, another endpoint hanging (500 in flight) | $hang50 | idle $idle50 | $(ratio "$hang50" "$idle50") | < 5 |")
    ROWS+=("| commit -> handler p99 ms, another endpoint hanging (500 in flight) | $hang99 | idle $idle99 | $(ratio "$hang99" "$idle99") | < 25 |")
    alone="${MED[http_10000]:-$(throughput_median "healthy alone" "$SINK" 10000 1)}"
    beside="$(throughput_median "healthy beside a failing subscription" "$SINK" 10000 1 "failing=$SINK_FAIL")"
    ROWS+=("| HTTP deliveries/s, 10,000 events, beside a subscription failing every delivery | $beside | alone $alone | $(ratio "$beside" "$alone") | >= 0.8 |")
fi

# --- sustained: 4 clients emit while the worker delivers -----------------------------------
if want sustained; then
    SUS_S="${SUSTAINED_SECONDS:-60}"; SUS_C="${SUSTAINED_CLIENTS:-4}"
    em=(); dl=(); bl=(); dr=(); s50=(); s99=()
    for r in $(seq "$RUNS"); do
        out="$("$DRIVER" sustained "$CONN" "$SINK" "$SUS_C" "$SUS_S")"
        echo "    sustained run $r: $out" >&2
        em+=("$(sed -n 's/.*emitted_per_s=\([0-9.]*\).*/\1/p' <<<"$out")")
        dl+=("$(sed -n 's/.*delivered_per_s=\([0-9.]*\).*/\1/p' <<<"$out")")
        bl+=("$(sed -n 's/.*backlog_at_end=\([0-9]*\).*/\1/p' <<<"$out")")
        dr+=("$(sed -n 's/.*drain_s=\([0-9.]*\).*/\1/p' <<<"$out")")
        s50+=("$(sed -n 's/.*probe_p50_ms=\([0-9.]*\).*/\1/p' <<<"$out")")
        s99+=("$(sed -n 's/.*probe_p99_ms=\([0-9.]*\).*/\1/p' <<<"$out")")
    done
    m() { printf '%s\n' "$@" | median; }
    e="$(m "${em[@]}")"; d="$(m "${dl[@]}")"
    ROWS+=("| sustained, $SUS_C clients emitting for $SUS_S s: deliveries/s during it | $d | events emitted/s $e | $(ratio "$d" "$e") | >= 1 (keeps up) |")
    ROWS+=("| sustained: backlog at the end / seconds to drain it | $(m "${bl[@]}") / $(m "${dr[@]}") | | | drained < 5 s |")
    ROWS+=("| sustained: commit -> handler p50 / p99 ms of a probe every 50 ms during it | $(m "${s50[@]}") / $(m "${s99[@]}") | | | |")
    # the same with a second subscription to the same events failing every attempt (nginx's /fail
    # answers 500: retries, then its breaker): the healthy one's deliveries/s beside alone's
    fd=(); fe=(); fdr=()
    for r in $(seq "$RUNS"); do
        out="$("$DRIVER" sustained "$CONN" "$SINK" "$SUS_C" "$SUS_S" "$SINK_FAIL")"
        echo "    sustained beside a failing subscription, run $r: $out" >&2
        fe+=("$(sed -n 's/.*emitted_per_s=\([0-9.]*\).*/\1/p' <<<"$out")")
        fd+=("$(sed -n 's/.*delivered_per_s=\([0-9.]*\).*/\1/p' <<<"$out")")
        fdr+=("$(sed -n 's/.*drain_s=\([0-9.]*\).*/\1/p' <<<"$out")")
    done
    f="$(m "${fd[@]}")"
    ROWS+=("| sustained beside a subscription failing every attempt: healthy deliveries/s (emitted/s $(m "${fe[@]}"); drain $(m "${fdr[@]}") s) | $f | alone $d | $(ratio "$f" "$d") | >= 0.9 |")
fi
# (a sourced file returns its last status: a section left out must not stop run.sh)
true
