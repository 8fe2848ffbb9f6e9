# Source me (bash): makes sure PostgreSQL runs on 127.0.0.1 and exports ACON_TEST_POSTGRES_URL; then a one-node SLURM (.ci/slurm.sh).
# Idempotent and quick when postgres already runs (two psql checks). Installs the Debian package
# when it is missing (needs root and apt). Without root it only warns: the postgres tests then skip.

_acon_pg_as_postgres() { runuser -u postgres -- "$@"; }

_acon_pg_install() {
    if ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && command -v pg_ctlcluster >/dev/null; then
        return 0
    fi
    echo "services: installing postgresql (apt-get)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
}

_acon_pg_start() {
    local port=$1 cluster version
    if pg_isready -q -h 127.0.0.1 -p "$port"; then
        return 0
    fi
    # the cluster on this port if there is one, else a new one; apt may leave it stopped in containers
    cluster=$(pg_lsclusters -h | awk -v p="$port" '$3 == p {print $1 " " $2; exit}')
    if [ -z "$cluster" ]; then
        version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
        pg_createcluster -p "$port" "$version" acon >/dev/null
        cluster="$version acon"
    fi
    pg_ctlcluster $cluster start
    for _ in $(seq 1 60); do
        pg_isready -q -h 127.0.0.1 -p "$port" && return 0
        sleep 0.5
    done
    echo "services: postgres did not start on 127.0.0.1:$port" >&2
    return 1
}

_acon_pg_database() {
    local port=$1 user=$2 password=$3 db=$4
    local sql="psql -X -q -p $port -d postgres -tAc"
    if [ "$(_acon_pg_as_postgres $sql "SELECT 1 FROM pg_roles WHERE rolname = '$user'")" != "1" ]; then
        _acon_pg_as_postgres $sql "CREATE ROLE $user LOGIN CREATEDB PASSWORD '$password'"
    fi
    # the tests drop their databases WITH (FORCE): an autovacuum worker on one (no role of its own) can only be
    # stopped by a member of pg_signal_backend, else the drop fails now and then under load
    _acon_pg_as_postgres $sql "GRANT pg_signal_backend TO $user"
    if [ "$(_acon_pg_as_postgres $sql "SELECT 1 FROM pg_database WHERE datname = '$db'")" != "1" ]; then
        _acon_pg_as_postgres $sql "CREATE DATABASE $db OWNER $user"
    fi
}

_acon_services() {
    local port=${ACON_PG_PORT:-5432} user=acon password=acon db=acon_test
    if [ "$(id -u)" != "0" ]; then
        echo "services: not root, postgres not managed; the postgres tests will skip unless ACON_TEST_POSTGRES_URL is set" >&2
        return 0
    fi
    _acon_pg_install && _acon_pg_start "$port" && _acon_pg_database "$port" "$user" "$password" "$db" || return 1
    export ACON_TEST_POSTGRES_URL="postgresql+psycopg://$user:$password@127.0.0.1:$port/$db"
    echo "services: postgres ready at 127.0.0.1:$port (database $db)" >&2
}

_acon_services

# a one-node SLURM for the --launcher slurm tests (tests/test_slurm.py)
source "$(dirname "${BASH_SOURCE[0]}")/slurm.sh"
