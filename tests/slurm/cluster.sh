#!/usr/bin/env bash
# A throwaway single-node SLURM cluster for testing the pipeline's SLURM path.
#
# Everything lives in one directory: its own munge key and socket, slurm.conf, state, spool,
# logs, and file-backed stand-in GPUs declared in gres.conf, so a `--gpus=1` job schedules on a
# machine without a GPU. The daemons (munged, slurmctld, slurmd) run in the foreground as
# children we started, their PIDs are recorded, and `stop` ends exactly those PIDs.
# No systemd, no change to /etc: clients find the cluster through SLURM_CONF and the client
# wrappers in DIR/bin.
#
# Usage (as root; Debian's munge, slurmctld, slurmd and slurm-client installed):
#   cluster.sh install              install those packages with apt-get
#   cluster.sh start DIR            start the cluster in DIR (created, must be absent or empty)
#   cluster.sh stop DIR             stop the daemons started in DIR (idempotent)
#   cluster.sh run DIR -- CMD ...   start, run CMD with SLURM_CONF set, save the controller's
#                                   view of every job to DIR/log/jobs.txt, stop (also on signals)
# After `start`, use the cluster with the line it prints:
#   export SLURM_CONF=DIR/slurm.conf PATH=DIR/bin:$PATH
#
# Environment: MLPBENCH_SLURM_GPUS (stand-in GPUs, default 1),
#              MLPBENCH_SLURM_READY_S (seconds to wait for the node to come up, default 60).
set -euo pipefail

PACKAGES=(munge slurmctld slurmd slurm-client)
DAEMONS=(munged slurmctld slurmd)   # start order; stop runs in reverse
GPUS=${MLPBENCH_SLURM_GPUS:-1}
NODE_HOSTNAME=mlpbench-node
READY_S=${MLPBENCH_SLURM_READY_S:-60}

die() { echo "cluster.sh: $*" >&2; exit 1; }

install_packages() {
    [[ $(id -u) == 0 ]] || die "installing packages needs root"
    export DEBIAN_FRONTEND=noninteractive
    # Package lists may be missing or stale on a fresh machine: refresh them once if needed.
    apt-get install -y --no-install-recommends "${PACKAGES[@]}" ||
        { apt-get update && apt-get install -y --no-install-recommends "${PACKAGES[@]}"; }
}

# A TCP port nobody listens on, from a random start, so a real or a second test cluster on
# this machine is never disturbed.
free_port() {
    local port
    for _ in $(seq 200); do
        port=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    die "no free TCP port found"
}

write_config() {
    local dir=$1 node
    # `slurmd -C` describes this machine's CPUs and memory; the node is renamed to localhost
    # because daemons and clients all talk over the loopback interface.
    node=$(slurmd -C | head -n 1 | sed -E 's/^NodeName=[^ ]+/NodeName=localhost NodeAddr=127.0.0.1/')

    mkdir -p "$dir"/{state,spool,log,gpu}
    # Stand-in GPUs: slurmd wants a character device behind each File= of gres.conf to give the
    # job a GPU index (SLURM_JOB_GPUS, CUDA_VISIBLE_DEVICES); these nodes have the null device's
    # numbers, so nothing real is behind them. Where mknod is not allowed, plain files still
    # let a --gpus job schedule, only without the index.
    for ((i = 0; i < GPUS; i++)); do
        mknod "$dir/gpu/nvidia$i" c 1 3 2>/dev/null || : >"$dir/gpu/nvidia$i"
    done

    cat >"$dir/slurm.conf" <<EOF
ClusterName=mlpbench-test
SlurmctldHost=localhost
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/state/slurmctld.pid
SlurmdPidFile=$dir/spool/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
# Finished jobs stay visible to squeue for 5 minutes: without accounting, squeue is how the
# executor learns that a job finished.
MinJobAge=300
# Jobs that ask for no memory get a little, not the whole node.
DefMemPerCPU=1000
# Record, on the node, which GPUs each job was given (runs at allocation, as root).
Prolog=$dir/prolog.sh
PrologFlags=Alloc
GresTypes=gpu
$node Gres=gpu:$GPUS State=UNKNOWN
# Two partitions on the one node, so that a test can tell which one a job was sent to.
PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
EOF
    cat >"$dir/gres.conf" <<EOF
AutoDetect=off
NodeName=localhost Name=gpu File=$dir/gpu/nvidia[0-$((GPUS - 1))]
EOF
    cat >"$dir/prolog.sh" <<EOF
#!/bin/sh
# job id | node | SLURM_JOB_GPUS | CUDA_VISIBLE_DEVICES
echo "\$SLURM_JOB_ID|\$SLURMD_NODENAME|\${SLURM_JOB_GPUS:-}|\${CUDA_VISIBLE_DEVICES:-}" >>"$dir/log/prolog.log"
EOF
    chmod 755 "$dir/prolog.sh"

    # Client wrappers that name this cluster's slurm.conf. SLURM_CONF alone is not enough: the
    # executor's job step drops SLURM_* variables before it calls srun inside the job, and srun
    # then looks in /etc/slurm, which this cluster leaves alone. Jobs inherit PATH (sbatch
    # --export=ALL), so srun inside a job finds its wrapper.
    mkdir -p "$dir/bin"
    for client in sbatch srun squeue sinfo scontrol scancel sacct; do
        printf '#!/bin/sh\nSLURM_CONF=%s exec %s "$@"\n' "$dir/slurm.conf" "$(command -v "$client")" \
            >"$dir/bin/$client"
        chmod 755 "$dir/bin/$client"
    done
}

# Start one daemon in the foreground, detached from our terminal and output pipes (a caller
# that captures our output would otherwise wait for the daemon to exit), and record its PID.
launch() {
    local dir=$1 name=$2
    shift 2
    setsid "$@" </dev/null >>"$dir/log/$name.out" 2>&1 &
    echo $! >"$dir/run/$name.pid"
}

# Poll CHECK until it succeeds; give up early if daemon NAME has died.
wait_for() {
    local name=$1 what=$2 check=$3 pid
    pid=$(<"$DIR/run/$name.pid")
    for _ in $(seq $((READY_S * 5))); do
        if eval "$check" >/dev/null 2>&1; then return 0; fi
        [[ -d /proc/$pid ]] || break
        sleep 0.2
    done
    echo "cluster.sh: gave up waiting for $what; logs follow" >&2
    tail -n 20 "$DIR"/log/* >&2 || true
    return 1
}

start() {
    DIR=$1
    [[ $(id -u) == 0 ]] || die "starting the daemons needs root"
    for bin in munged slurmctld slurmd sinfo; do
        command -v "$bin" >/dev/null || die "$bin not found (run: cluster.sh install)"
    done
    mkdir -p "$DIR"
    [[ -z $(ls -A "$DIR") ]] || die "$DIR is not empty"
    DIR=$(cd "$DIR" && pwd)
    # munged runs as user munge and must reach its files through DIR.
    chmod 755 "$DIR"
    mkdir -p "$DIR/run"
    trap 'stop "$DIR"' ERR INT TERM
    write_config "$DIR"

    # munged wants its socket directory open to all (clients connect), its key readable by it alone.
    install -d -o munge -g munge -m 755 "$DIR/munge"
    mungekey --create --keyfile="$DIR/munge/munge.key"
    chown munge:munge "$DIR/munge/munge.key"
    chmod 400 "$DIR/munge/munge.key"
    launch "$DIR" munged setpriv --reuid=munge --regid=munge --init-groups \
        munged --foreground --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
        --log-file="$DIR/munge/munged.log" --pid-file="$DIR/munge/munged.pid" \
        --seed-file="$DIR/munge/munged.seed"
    wait_for munged munged "[[ -S '$DIR/munge/munge.socket' ]]"

    export SLURM_CONF=$DIR/slurm.conf
    launch "$DIR" slurmctld slurmctld -D -i -f "$SLURM_CONF"
    wait_for slurmctld slurmctld "scontrol ping | grep -q UP"
    # The node gets a host name of its own (a UTS namespace, where the kernel allows one), as a
    # cluster's compute node has: code that names things after the host sees the difference.
    if unshare --uts true 2>/dev/null; then
        # shellcheck disable=SC2016 # $0 and $1 are the inner shell's arguments
        launch "$DIR" slurmd unshare --uts sh -c \
            'hostname "$0" && exec slurmd -D -N localhost -f "$1"' "$NODE_HOSTNAME" "$SLURM_CONF"
    else
        launch "$DIR" slurmd slurmd -D -N localhost -f "$SLURM_CONF"
    fi
    wait_for slurmd "node localhost to be idle" "[[ \$(sinfo -h -n localhost -o %T) == idle ]]"
    trap - ERR INT TERM
    echo "export SLURM_CONF=$SLURM_CONF PATH=$DIR/bin:\$PATH"
}

# Is PID still the daemon NAME we started? (A PID can be reused after the daemon died.)
is_ours() {
    local pid=$1 name=$2
    [[ -r /proc/$pid/comm && $(</proc/"$pid"/comm) == "$name" ]]
}

stop() {
    local dir=$1 pidfile pid name i jobs
    # Jobs still running would leave their slurmstepd and processes behind: cancel them while
    # the controller is up, and give them a moment to end.
    pidfile=$dir/run/slurmctld.pid
    if [[ -f $pidfile ]] && is_ours "$(<"$pidfile")" slurmctld; then
        export SLURM_CONF=$dir/slurm.conf
        jobs=$(squeue -h -t pending,running,suspended -o %A 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            # shellcheck disable=SC2086 # one job id per word
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 50); do
                [[ -z $(squeue -h -t running,completing -o %A 2>/dev/null) ]] && break
                sleep 0.2
            done
        fi
    fi
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        name=${DAEMONS[i]}
        pidfile=$dir/run/$name.pid
        [[ -f $pidfile ]] || continue
        pid=$(<"$pidfile")
        if is_ours "$pid" "$name"; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 50); do is_ours "$pid" "$name" || break; sleep 0.1; done
            if is_ours "$pid" "$name"; then kill -KILL "$pid" 2>/dev/null || true; fi
        fi
        rm -f "$pidfile"
    done
}

# Pass signal SIG to the command of `run`; kill it if it is still there 30 s later.
end_child() {
    kill -"$1" "$CHILD" 2>/dev/null || return 0
    for _ in $(seq 150); do [[ -d /proc/$CHILD ]] || return 0; sleep 0.2; done
    kill -KILL "$CHILD" 2>/dev/null || true
}

run() {
    local dir=$1 status=0
    shift
    [[ ${1:-} == -- ]] && shift
    (($#)) || die "run: no command given"
    start "$dir" >/dev/null
    DIR=$(cd "$dir" && pwd)
    trap 'stop "$DIR"' EXIT
    # The command runs in the background so that a signal reaches this script at once (bash
    # defers traps while a foreground child runs); the trap passes it on, then stops the cluster.
    SLURM_CONF=$DIR/slurm.conf PATH=$DIR/bin:$PATH "$@" &
    CHILD=$!
    trap 'end_child TERM; exit 143' TERM
    trap 'end_child INT; exit 130' INT
    wait "$CHILD" || status=$?
    # The controller's record of every job (finished ones stay for MinJobAge), with GRES indices.
    SLURM_CONF=$DIR/slurm.conf scontrol -o -d show job >"$DIR/log/jobs.txt" 2>&1 || true
    return "$status"
}

case ${1:-} in
install) install_packages ;;
start) [[ $# == 2 ]] || die "usage: cluster.sh start DIR"; start "$2" ;;
stop) [[ $# == 2 ]] || die "usage: cluster.sh stop DIR"; stop "$2" ;;
run) [[ $# -ge 3 ]] || die "usage: cluster.sh run DIR -- CMD ..."; dir=$2; shift 2; run "$dir" "$@" ;;
*) die "usage: cluster.sh install | start DIR | stop DIR | run DIR -- CMD ..." ;;
esac
