#!/usr/bin/env bash
# Release artefacts of event_bus, one set per PostgreSQL major version, in target/packages/:
#   postgresql-<V>-event-bus_<version>-1_amd64.deb    Debian / PGDG layout (/usr/lib/postgresql/<V>/lib,
#                                                     /usr/share/postgresql/<V>/extension), depends on
#                                                     postgresql-<V>
#   event_bus-<version>-pg<V>-linux-x86_64.tar.gz     any layout: lib/, extension/ and an install.sh that
#                                                     copies them where a given pg_config says
# Each with a .sha256 beside it.
#   scripts/package.sh              all of 15 16 17 18
#   scripts/package.sh 15 17        those
# Builds with the release profile against each version's headers (Debian's for 15, those of
# scripts/install-pg.sh for 16-18). Run as root on Debian (dpkg-deb).
set -euo pipefail
cd "$(dirname "$0")/.."

versions=("$@")
[ "${#versions[@]}" -gt 0 ] || versions=(15 16 17 18)
scripts/install-deps.sh >/dev/null
for v in "${versions[@]}"; do [ "$v" = 15 ] || scripts/install-pg.sh "$v"; done

VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
ARCH="$(dpkg --print-architecture)"
OUT="target/packages"
mkdir -p "$OUT"

for v in "${versions[@]}"; do
    if [ "$v" = 15 ]; then
        pg_config=/usr/bin/pg_config
    else
        pg_config="${EVENT_BUS_PG_ROOT:-/opt/event_bus-pg}/$v/bin/pg_config"
    fi
    echo "==> PostgreSQL $v: release build"
    build="target/package-build/pg$v"
    rm -rf "$build"
    cargo pgrx package --no-default-features --features "pg$v" --pg-config "$pg_config" --out-dir "$build" >/dev/null
    so="$(find "$build" -name event_bus.so | head -1)"
    control="$(find "$build" -name event_bus.control | head -1)"
    [ -n "$so" ] && [ -n "$control" ] || { echo "package.sh: no event_bus.so / control in $build" >&2; exit 1; }
    extdir="$(dirname "$control")"
    # as Debian packages ship them: without debug symbols (15 MB -> about 8)
    strip --strip-unneeded "$so"

    # --- the Debian package ---------------------------------------------------------------
    name="postgresql-$v-event-bus"
    stage="target/package-build/deb-$v"
    rm -rf "$stage"
    install -d "$stage/DEBIAN" "$stage/usr/lib/postgresql/$v/lib" "$stage/usr/share/postgresql/$v/extension" \
        "$stage/usr/share/doc/$name"
    install -m 0644 "$so" "$stage/usr/lib/postgresql/$v/lib/event_bus.so"
    install -m 0644 "$extdir"/event_bus.control "$extdir"/event_bus--*.sql "$stage/usr/share/postgresql/$v/extension/"
    install -m 0644 README.md "$stage/usr/share/doc/$name/README.md"
    size="$(du -sk "$stage" | cut -f1)"
    cat > "$stage/DEBIAN/control" <<CONTROL
Package: $name
Version: $VERSION-1
Architecture: $ARCH
Maintainer: event_bus developers <event-bus@localhost>
Depends: postgresql-$v, libc6, libgcc-s1
Section: database
Priority: optional
Installed-Size: $size
Description: transactional event bus inside PostgreSQL $v
 Modules emit events in the same transaction as their business write; a
 background worker delivers them over HTTP or to SQL handlers, with retries,
 dead letters, replay, ordering per entity and row-level security per tenant.
 Add event_bus to shared_preload_libraries, restart, then
 CREATE EXTENSION event_bus.
CONTROL
    deb="$OUT/${name}_${VERSION}-1_${ARCH}.deb"
    dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null

    # --- the tarball ----------------------------------------------------------------------
    tname="event_bus-$VERSION-pg$v-linux-$(uname -m)"
    tstage="target/package-build/$tname"
    rm -rf "$tstage"
    install -d "$tstage/lib" "$tstage/extension"
    install -m 0644 "$so" "$tstage/lib/event_bus.so"
    install -m 0644 "$extdir"/event_bus.control "$extdir"/event_bus--*.sql "$tstage/extension/"
    install -m 0644 README.md "$tstage/README.md"
    cat > "$tstage/install.sh" <<INSTALL
#!/bin/sh
# Installs event_bus $VERSION for PostgreSQL $v where pg_config says (PG_CONFIG=/path/to/pg_config
# to choose one). Then: shared_preload_libraries = 'event_bus', restart, CREATE EXTENSION event_bus.
set -eu
cd "\$(dirname "\$0")"
PG_CONFIG="\${PG_CONFIG:-pg_config}"
major="\$("\$PG_CONFIG" --version | sed -n 's/^PostgreSQL \\([0-9]*\\).*/\\1/p')"
if [ "\$major" != "$v" ]; then
    echo "this build of event_bus is for PostgreSQL $v; \$PG_CONFIG is PostgreSQL \$major" >&2
    exit 1
fi
install -m 0755 lib/event_bus.so "\$("\$PG_CONFIG" --pkglibdir)/event_bus.so"
install -m 0644 extension/* "\$("\$PG_CONFIG" --sharedir)/extension/"
echo "installed event_bus $VERSION into \$("\$PG_CONFIG" --pkglibdir) and \$("\$PG_CONFIG" --sharedir)/extension"
INSTALL
    chmod 0755 "$tstage/install.sh"
    tarball="$OUT/$tname.tar.gz"
    tar -czf "$tarball" -C target/package-build --owner=0 --group=0 "$tname"

    for f in "$deb" "$tarball"; do
        (cd "$OUT" && sha256sum "$(basename "$f")" > "$(basename "$f").sha256")
        echo "    $f"
    done
done
