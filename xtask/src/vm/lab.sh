# Sourced by /init on the lab kernel (`cargo xtask vm --kernel lab`), after
# the runs every lane makes: the runs only this kernel allows. It uses
# init.sh's devices and its `suite`, `say` and `setup_failed`. Which exit
# code and outcome each run must have is decided on the host
# (xtask/src/vm/labkernel.rs).

MTTY_PARAMETERS=/sys/module/mtty/parameters

# Prints the /dev/vfio/devices/vfioN node of the mdev $1.
cdev_node() {
    for dir in "/sys/bus/mdev/devices/$1/vfio-dev/"vfio*; do
        if [ -c "/dev/vfio/devices/${dir##*/}" ]; then
            echo "/dev/vfio/devices/${dir##*/}"
            return 0
        fi
    done
    setup_failed "mdev $1 has no VFIO device cdev under /dev/vfio/devices"
    return 1
}

# Waits until a case process (`vfio-migtest __case`, not the run's short
# probe) has the node $1 open; sets HOLDER_CASE to its PID.
wait_for_case_holder() {
    tries=0
    while [ "$tries" -lt 300 ]; do
        for fd in /proc/[0-9]*/fd/*; do
            [ "$(readlink "$fd" 2>/dev/null)" = "$1" ] || continue
            pid=${fd#/proc/}
            pid=${pid%%/*}
            if tr '\000' ' ' <"/proc/$pid/cmdline" | grep -q ' __case '; then
                HOLDER_CASE=$pid
                return 0
            fi
        done
        sleep 1
        tries=$((tries + 1))
    done
    return 1
}

# Arms mtty's lab fault $1 (lab/kernel/mtty-lab-faults.patch) for one run
# of the cases in /lab-cases/$1 on the devices "$2...", then disarms it.
# The case deadline is short: the hang fault sleeps for longer.
run_fault() {
    fault=$1
    shift
    echo "$fault" >"$MTTY_PARAMETERS/lab_fault"
    suite "fault-$fault" vfio-migtest run "$@" --cases "/lab-cases/$fault" \
        --timeout 20s --out "/results/fault-$fault"
    echo none >"$MTTY_PARAMETERS/lab_fault"
}

run_lab() {
    CDEV_A=$(cdev_node "$UUID_A") && CDEV_B=$(cdev_node "$UUID_B") &&
        CDEV_C=$(cdev_node "$UUID_C") || return 1
    printf 'CDEV_A=%s\nCDEV_B=%s\nCDEV_C=%s\n' "$CDEV_A" "$CDEV_B" "$CDEV_C" \
        >>/results/devices.env
    # mtty does no DMA: it declares writes (lab/kernel/mtty-lab-faults.patch)
    # so that dma-logging-layout can judge a REPORT's bit positions.
    echo 0x123000,0x150010 >"$MTTY_PARAMETERS/lab_dma_writes"
    # The whole catalogue again, through iommufd: bind, IOAS, attach.
    suite mtty-cdev vfio-migtest run --device "$CDEV_A" --destination "$CDEV_B" \
        --incompatible "$CDEV_C" --include-dangerous --out /results/mtty-cdev \
        --expect /expectations/mtty.yaml "$@"

    # The group is open elsewhere: the cdev cannot be bound (EBUSY).
    sleep 600 3<>"/dev/vfio/$GROUP_A" &
    holder=$!
    suite busy-cdev-group vfio-migtest run --device "$CDEV_A" --out /results/busy-cdev-group
    kill "$holder"
    wait "$holder" 2>/dev/null

    # Another vfio-migtest has the cdev bound, in a case that sleeps: the
    # cdev path allows one user at a time (EINVAL), named in the refusal.
    mkdir -p /lab-holder
    cat >/lab-holder/hold.yaml <<'EOF'
name: hold
about: Keeps the device bound while another run tries to open it
timeout: 900s
steps:
  - sleep: 600s
EOF
    vfio-migtest run --device "$CDEV_A" --cases /lab-holder --out /run/holder \
        >/results/holder.log 2>&1 &
    holder=$!
    if wait_for_case_holder "$CDEV_A"; then
        suite busy-cdev vfio-migtest run --device "$CDEV_A" --out /results/busy-cdev
        # A run lets its running case finish on SIGTERM: end the case first.
        kill "$HOLDER_CASE"
    else
        setup_failed "the holder run never opened $CDEV_A"
    fi
    kill "$holder"
    wait "$holder" 2>/dev/null

    run_fault warn --device "$CDEV_A"
    run_fault lockdep --device "$CDEV_A"
    run_fault kasan --device "$CDEV_A"
    echo 60 >"$MTTY_PARAMETERS/lab_hang_secs"
    run_fault hang --device "$CDEV_A" --device "$CDEV_B"
}
