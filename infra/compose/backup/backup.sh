#!/bin/sh
# Windmill database backups to Azure Blob Storage, authenticated with the VM's managed identity.
#
#   backup.sh loop                 nightly at BACKUP_HOUR_UTC (the compose service)
#   backup.sh now                  one backup at once
#   backup.sh list                 the backups in the container, oldest first
#   backup.sh restore BLOB [DB]    download BLOB and restore it into database DB (default windmill_restore),
#                                  which must not exist yet: a drill never touches the live database
#   backup.sh health               exit 0 if a backup succeeded in the last 26 hours (the healthcheck)
#
# Dumps use pg_dump's custom format (compressed, and pg_restore can restore it selectively or in parallel).
# Upload is one Put Blob request (Azure's limit for that is 5000 MiB); a larger database needs block uploads.
set -eu

: "${PGHOST:?}" "${PGUSER:?}" "${PGDATABASE:?}" "${PGPASSWORD:?}" "${AZURE_STORAGE_ACCOUNT:?}"
CONTAINER="${BACKUP_CONTAINER:-backups}"
HOUR="${BACKUP_HOUR_UTC:-2}"
DIR=/backups
HEARTBEAT="$DIR/heartbeat"
API_VERSION=2023-11-03
BLOB_ROOT="https://${AZURE_STORAGE_ACCOUNT}.blob.core.windows.net/${CONTAINER}"

log() { printf '%s backup: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

token() {
    # The instance metadata service hands the VM's managed identity a token for Azure Storage.
    curl -fsS --max-time 10 -H Metadata:true \
        "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fstorage.azure.com%2F" \
        | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p'
}

backup_now() {
    mkdir -p "$DIR"
    name="windmill-$(date -u +%Y%m%dT%H%M%SZ).dump"
    file="$DIR/$name"
    log "dumping $PGDATABASE to $name"
    pg_dump --format=custom --compress=6 --file="$file.partial" "$PGDATABASE"
    mv "$file.partial" "$file"
    bearer="$(token)"
    [ -n "$bearer" ] || { log "no token from the managed identity"; return 1; }
    log "uploading $(stat -c %s "$file") bytes to $CONTAINER/windmill/$name"
    curl -fsS --max-time 3600 -X PUT -T "$file" \
        -H "Authorization: Bearer $bearer" -H "x-ms-version: $API_VERSION" \
        -H "x-ms-blob-type: BlockBlob" -H "Content-Type: application/octet-stream" \
        "$BLOB_ROOT/windmill/$name" >/dev/null
    # Keep only the newest local copy; the storage account keeps the history (lifecycle rule in main.bicep).
    find "$DIR" -name 'windmill-*.dump' ! -name "$name" -delete
    touch "$HEARTBEAT"
    log "done: $name"
}

list() {
    bearer="$(token)"
    curl -fsS --max-time 60 -H "Authorization: Bearer $bearer" -H "x-ms-version: $API_VERSION" \
        "$BLOB_ROOT?restype=container&comp=list&prefix=windmill/" \
        | grep -o '<Name>[^<]*</Name>' | sed 's/<[^>]*>//g' | sort
}

restore() {
    blob="$1"
    target="${2:-windmill_restore}"
    [ "$target" != "$PGDATABASE" ] || { log "refusing to restore over the live database $PGDATABASE"; exit 2; }
    bearer="$(token)"
    file="$DIR/restore.dump"
    log "downloading $blob"
    curl -fsS --max-time 3600 -o "$file" -H "Authorization: Bearer $bearer" -H "x-ms-version: $API_VERSION" \
        "$BLOB_ROOT/$blob"
    log "restoring into new database $target"
    createdb "$target"
    pg_restore --dbname="$target" --no-owner --exit-on-error "$file"
    rm -f "$file"
    log "restored $blob into $target"
}

health() {
    [ -f "$HEARTBEAT" ] && [ $(( $(date +%s) - $(stat -c %Y "$HEARTBEAT") )) -lt 93600 ]
}

loop() {
    mkdir -p "$DIR"
    touch "$HEARTBEAT"
    while :; do
        now=$(date -u +%s)
        next=$(date -u -d "$(date -u +%Y-%m-%d) ${HOUR}:00:00" +%s)
        [ "$next" -gt "$now" ] || next=$((next + 86400))
        log "next backup at $(date -u -d "@$next" +%Y-%m-%dT%H:%M:%SZ)"
        sleep $((next - now))
        # A failed night is logged and the healthcheck turns unhealthy after 26 hours; the loop carries on.
        backup_now || log "backup FAILED"
    done
}

case "${1:-}" in
    loop) loop ;;
    now) backup_now ;;
    list) list ;;
    restore) [ $# -ge 2 ] || { echo "usage: backup.sh restore BLOB [DB]" >&2; exit 2; }; restore "$2" "${3:-}" ;;
    health) health ;;
    *) echo "usage: backup.sh loop|now|list|restore BLOB [DB]|health" >&2; exit 2 ;;
esac
