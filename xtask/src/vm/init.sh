#!/bin/busybox sh
# /init of the VM lab guest, written by `cargo xtask vm`: sets up real VFIO
# devices, runs vfio-migtest on them, sends /results to the host over the
# second serial port and powers off. Whatever fails, the results folder and
# the kernel log still go out, so the host can say what went wrong.

/bin/busybox mkdir -p /proc /sys /dev /run /results /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# Fixed, so that logs and expectation files can name the devices.
UUID_A=83b8f4f2-509f-382f-3c1e-e6bfe0fa1001 # mtty-2, the device under test
UUID_B=83b8f4f2-509f-382f-3c1e-e6bfe0fa1002 # mtty-2, the migration destination
UUID_C=83b8f4f2-509f-382f-3c1e-e6bfe0fa1003 # mtty-1, its stream must be refused
MTTY_TYPES=/sys/class/mdev_bus/mtty/mdev_supported_types

# The host looks for these exact lines (xtask/src/vm/results.rs).
RESULTS_PORT=/dev/ttyS1
RESULTS_BEGIN="--- vfio-migtest results begin ---"
RESULTS_END="--- vfio-migtest results end ---"

# ---- The suite invocations: adjust them here. ------------------------------
# Each run is recorded as "<name> <exit code>" in /results/exit-codes; which
# codes are acceptable is decided on the host (xtask/src/vm/results.rs).
# mtty's known deviations are listed in expectations/mtty.yaml.
run_suite() {
    suite mtty vfio-migtest run --device "$UUID_A" --destination "$UUID_B" \
        --incompatible "$UUID_C" --include-dangerous --out /results/mtty \
        --expect /expectations/mtty.yaml "$@"
    suite pci vfio-migtest run --device "$NIC_BDF" --out /results/pci
    # Another process holds the group open: the run must refuse the device.
    sleep 600 3<>"/dev/vfio/$GROUP_A" &
    holder=$!
    suite busy vfio-migtest run --device "$UUID_A" --out /results/busy
    kill "$holder"
    wait "$holder" 2>/dev/null
    suite probe vfio-migtest probe
    vfio-migtest probe --json >/results/probe.json 2>&1
    # A live migration over loopback, one process each: receive on the
    # second mtty-2, migrate the first (RUNNING after the suite) to it;
    # both save again from STOP, which must give the same stream.
    # The lab kernel has no networking (no /proc/net): it skips this, and
    # the host expects it there only (xtask/src/vm/results.rs).
    if [ -d /proc/net ]; then
        ip link set lo up
        suite receive vfio-migtest receive --device "$UUID_B" --listen 127.0.0.1:47000 \
            --json /results/receive.json --resave /results/live-dst.vmsave &
        receiver=$!
        suite migrate vfio-migtest migrate --device "$UUID_A" --to 127.0.0.1:47000 \
            --json /results/migrate.json --resave /results/live-src.vmsave
        wait "$receiver"
        suite live-resave-identical same_stream /results/live-src.vmsave /results/live-dst.vmsave
    fi
    # A migration through a file: save on one mtty-2, resume on the other.
    suite save vfio-migtest save --device "$UUID_A" --file /results/mtty-2.vmsave
    suite resume vfio-migtest resume --device "$UUID_B" --file /results/mtty-2.vmsave \
        --resave /results/mtty-2-again.vmsave
    suite resave-identical same_stream /results/mtty-2.vmsave /results/mtty-2-again.vmsave
    suite resume-foreign vfio-migtest resume --device "$UUID_C" --file /results/mtty-2.vmsave
    # mtty checks the total length before the header: written whole, the
    # 96-byte mtty-2 stream is ENOMEM for the 60-byte mtty-1 state; in 24-byte
    # chunks the header check (nr_ports) answers EFAULT.
    suite resume-forced vfio-migtest resume --device "$UUID_C" --file /results/mtty-2.vmsave \
        --force --chunk 24
    v1_lane
}

# Whether two save files carry the same stream (their headers differ: the
# source device, the time). The header length is the u32 at offset 12.
same_stream() {
    for f in "$1" "$2"; do
        h=$(od -An -tu4 -j12 -N4 "$f" | tr -d ' ')
        tail -c +$((h + 1)) "$f" >"$f.stream" || return 1
    done
    cmp "$1.stream" "$2.stream"
}
# -----------------------------------------------------------------------------

# Runs the command "$2..." as the suite run named $1.
suite() {
    name=$1
    shift
    say "run $name: $*"
    "$@" >"/results/$name.log" 2>&1
    code=$?
    cat "/results/$name.log"
    echo "$name $code" >>/results/exit-codes
    say "run $name: exit code $code"
}

# Diagnostics go to stderr so that functions can print results on stdout.
say() {
    echo "vm-lab: $*" >&2
}

# Records why the devices could not be set up; the host reports it and fails.
setup_failed() {
    say "setup failed: $*"
    echo "$*" >>/results/setup-error
}

# Modules are named NN-name.ko, so the glob yields the dependency order.
# The lab kernel has everything built in: no modules.
load_modules() {
    for module in /modules/*.ko; do
        [ -e "$module" ] || continue
        say "insmod ${module#/modules/}"
        insmod "$module" || { setup_failed "insmod $module failed"; return 1; }
    done
}

# Prints the IOMMU group of the sysfs device $1, if it has a VFIO group node.
vfio_group() {
    link=$(readlink "$1/iommu_group") || return 1
    group=${link##*/}
    [ -c "/dev/vfio/$group" ] && echo "$group"
}

# Creates the mtty device $1 of type $2 and prints its IOMMU group.
create_mdev() {
    echo "$1" >"$MTTY_TYPES/$2/create" ||
        { setup_failed "cannot create $2 device $1"; return 1; }
    vfio_group "/sys/bus/mdev/devices/$1" ||
        { setup_failed "$2 device $1 has no /dev/vfio group node"; return 1; }
}

create_mdevs() {
    GROUP_A=$(create_mdev "$UUID_A" mtty-2) &&
        GROUP_B=$(create_mdev "$UUID_B" mtty-2) &&
        GROUP_C=$(create_mdev "$UUID_C" mtty-1) || return 1
    say "ls /sys/bus/mdev/devices:"
    ls /sys/bus/mdev/devices >&2
}

# Prints the address of the first Ethernet controller (the emulated NIC).
find_nic() {
    for dev in /sys/bus/pci/devices/*; do
        if [ "$(cat "$dev/class")" = 0x020000 ]; then
            echo "${dev##*/}"
            return 0
        fi
    done
    return 1
}

bind_nic() {
    NIC_BDF=$(find_nic) ||
        { setup_failed "no Ethernet controller (class 0x020000) found"; return 1; }
    echo vfio-pci >"/sys/bus/pci/devices/$NIC_BDF/driver_override"
    echo "$NIC_BDF" >/sys/bus/pci/drivers_probe
    [ -e "/sys/bus/pci/drivers/vfio-pci/$NIC_BDF" ] ||
        { setup_failed "vfio-pci did not bind $NIC_BDF"; return 1; }
    NIC_GROUP=$(vfio_group "/sys/bus/pci/devices/$NIC_BDF") ||
        { setup_failed "$NIC_BDF has no /dev/vfio group node"; return 1; }
    say "$NIC_BDF bound to vfio-pci: $(ls -d "/sys/bus/pci/drivers/vfio-pci/$NIC_BDF")"
}

write_devices_env() {
    cat >/run/devices.env <<EOF
UUID_A=$UUID_A
GROUP_A=$GROUP_A
UUID_B=$UUID_B
GROUP_B=$GROUP_B
UUID_C=$UUID_C
GROUP_C=$GROUP_C
NIC_BDF=$NIC_BDF
NIC_GROUP=$NIC_GROUP
EOF
    say "devices:"
    cat /run/devices.env >&2
    ls -l /dev/vfio >&2
}

# Closing the port waits until the UART has sent everything, so the data is
# complete before poweroff.
send_results() {
    {
        echo "$RESULTS_BEGIN"
        tar -C /results -cf - . | gzip | base64
        echo "$RESULTS_END"
    } >"$RESULTS_PORT"
}

. /v1.sh

# Extra arguments from `cargo xtask vm -- ARGS`, one per line.
set --
while IFS= read -r arg; do
    set -- "$@" "$arg"
done </etc/suite-args

if load_modules && create_mdevs && bind_nic; then
    write_devices_env
    cp /run/devices.env /results/devices.env
    run_suite "$@"
    # The lab kernel's own runs (xtask/src/vm/lab.sh).
    if [ -f /lab.sh ]; then
        . /lab.sh
        run_lab "$@"
    fi
fi
dmesg >/results/kernel.log
send_results
poweroff -f
