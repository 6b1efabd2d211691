// SPDX-License-Identifier: GPL-2.0
/*
 * v1mig: a reference mdev driver for VFIO migration protocol v1, the
 * migration region of Linux 5.8 to 5.17 (struct vfio_device_migration_info,
 * region type VFIO_REGION_TYPE_MIGRATION_DEPRECATED 3, subtype 1). The VFIO
 * core never interpreted that region, so it still works on current kernels
 * as a device region like any other.
 *
 * A device has three regions:
 *   0  registers: V1MIG_NUM_REGS little-endian u32 (ID, TICKS, 4 scratch)
 *   1  state buffer: state_size bytes of device memory, read/write
 *   2  the v1 migration region: the 32-byte header at 0, the data area at
 *      V1MIG_DATA_OFFSET (one page in), PAGE_ALIGN(data_size) bytes,
 *      offered by sparse mmap when mmap=1.
 *
 * While it runs, the device changes on its own: every access to its fd
 * advances TICKS and, with changing=N, every Nth access rewrites a word of
 * the state buffer, so pre-copy has dirty blocks to send again.
 *
 * The stream: a 16-byte header (magic, version, type, state size), then
 * records of an 8-byte head (kind, index) and a payload: one per state
 * block (BLOCK, resent when dirtied), the registers (REGS, in stop-and-copy
 * only) and END. Resuming parses it across any chunking into a shadow copy
 * that is adopted when _RESUMING is left after END.
 *
 * Module parameters choose among the behaviours real v1 drivers showed
 * (freeze point, chunk size, how pending_bytes counts, mmap or read/write)
 * and, one each, break a rule of the protocol (the bug_* parameters), so
 * that a conformance suite can be checked against them. Counters of the
 * data area's use are in /sys/bus/mdev/devices/UUID/v1mig/.
 */

#include <linux/init.h>
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/device.h>
#include <linux/mm.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>
#include <linux/bitmap.h>
#include <linux/jhash.h>
#include <linux/vfio.h>
#include <linux/mdev.h>

#define V1MIG_NAME		"v1mig"
#define V1MIG_OFFSET_SHIFT	40
#define V1MIG_OFFSET_MASK	((1ULL << V1MIG_OFFSET_SHIFT) - 1)
#define V1MIG_INDEX_TO_OFFSET(i) ((u64)(i) << V1MIG_OFFSET_SHIFT)

enum {
	V1MIG_REGS_INDEX,
	V1MIG_BUFFER_INDEX,
	V1MIG_MIGRATION_INDEX,
	V1MIG_NUM_REGIONS,
};

enum {
	REG_ID,		/* read-only: magic ^ type */
	REG_TICKS,	/* read-only: accesses while running */
	REG_SCRATCH0,
	REG_SCRATCH1,
	REG_SCRATCH2,
	REG_SCRATCH3,
	V1MIG_NUM_REGS,
};

#define V1MIG_REGS_SIZE		(V1MIG_NUM_REGS * sizeof(u32))
#define V1MIG_HEADER_SIZE	sizeof(struct vfio_device_migration_info)
/* A page in, so that the data area can be mmapped. */
#define V1MIG_DATA_OFFSET	PAGE_SIZE
/* Dirty-tracking granule of the state buffer. */
#define V1MIG_BLOCK_SIZE	4096
#define V1MIG_MAX_STATE		(16 << 20)

#define V1MIG_MAGIC		0x474d3176	/* "v1MG" */
#define V1MIG_VERSION		1
#define V1MIG_STREAM_HEAD	16
#define V1MIG_RECORD_HEAD	8

enum { REC_BLOCK = 1, REC_REGS = 2, REC_END = 3 };

#define STATE_BITS(s)	((s) & VFIO_DEVICE_STATE_MASK)
#define IS_RUNNING(s)	((s) & VFIO_DEVICE_STATE_V1_RUNNING)
#define IS_SAVING(s)	(((s) & VFIO_DEVICE_STATE_V1_SAVING) && \
			 !VFIO_DEVICE_STATE_IS_ERROR(s))
#define IS_RESUMING(s)	(STATE_BITS(s) == VFIO_DEVICE_STATE_V1_RESUMING)

static unsigned int state_size = 65536;
module_param(state_size, uint, 0444);
MODULE_PARM_DESC(state_size, "bytes of state buffer of a v1mig-a device (v1mig-b: half)");

static unsigned int data_size = 4096;
module_param(data_size, uint, 0444);
MODULE_PARM_DESC(data_size, "bytes per save iteration; the data area is this, page aligned");

static char *freeze = "running";
module_param(freeze, charp, 0444);
MODULE_PARM_DESC(freeze, "when the device stops changing: running (clearing _RUNNING) or pending (first pending_bytes read after)");

static char *pending = "decreasing";
module_param(pending, charp, 0444);
MODULE_PARM_DESC(pending, "pending_bytes: decreasing (falls by data_size) or constant (until the last chunk)");

static unsigned int changing = 16;
module_param(changing, uint, 0444);
MODULE_PARM_DESC(changing, "while running, every Nth access dirties a state block (0: the state never changes)");

static bool use_mmap = true;
module_param_named(mmap, use_mmap, bool, 0444);
MODULE_PARM_DESC(mmap, "offer the data area by sparse mmap (else read/write only)");

static bool bug_pending_never_zero;
module_param(bug_pending_never_zero, bool, 0444);
MODULE_PARM_DESC(bug_pending_never_zero, "rule broken: pending_bytes never reaches 0 in stop-and-copy");

static bool bug_data_size_beyond;
module_param(bug_data_size_beyond, bool, 0444);
MODULE_PARM_DESC(bug_data_size_beyond, "rule broken: data_size reaches past the data area");

static bool bug_invalid_state_accepted;
module_param(bug_invalid_state_accepted, bool, 0444);
MODULE_PARM_DESC(bug_invalid_state_accepted, "rule broken: _RESUMING with other bits is accepted");

static bool bug_data_offset_moves;
module_param(bug_data_offset_moves, bool, 0444);
MODULE_PARM_DESC(bug_data_offset_moves, "rule broken: every second data_offset read gives another offset");

static bool bug_truncated_resume_accepted;
module_param(bug_truncated_resume_accepted, bool, 0444);
MODULE_PARM_DESC(bug_truncated_resume_accepted, "rule broken: leaving _RESUMING succeeds before the stream ended");

struct v1mig_type {
	struct mdev_type type;
	u32 id;
};

static struct v1mig_type v1mig_types[] = {
	{ .id = 1, .type.sysfs_name = "a", .type.pretty_name = "v1 migration, full state" },
	{ .id = 2, .type.sysfs_name = "b", .type.pretty_name = "v1 migration, half state" },
};

static struct mdev_type *v1mig_mdev_types[] = {
	&v1mig_types[0].type,
	&v1mig_types[1].type,
};

/* One piece of the stream being sent: a head and a payload. */
struct v1mig_item {
	u8 head[V1MIG_STREAM_HEAD];
	u32 head_len;
	const u8 *payload;
	u32 payload_len;
	u32 pos;
};

struct v1mig_save {
	bool active;
	bool header_sent;
	bool regs_sent;
	bool end_sent;
	struct v1mig_item item;
	/* An iteration's pending_bytes, repeated until data_offset is read. */
	bool pending_valid;
	u64 pending;
	/* pending=constant: the value reported until the last chunk. */
	u64 pending_const;
};

struct v1mig_resume {
	u8 *buf;
	u32 regs[V1MIG_NUM_REGS];
	u8 head[V1MIG_STREAM_HEAD];
	u32 head_len;
	u32 head_want;
	u8 *payload;
	u32 payload_left;
	bool header_done;
	bool ended;
};

struct v1mig_state {
	struct vfio_device vdev;
	struct mutex lock;
	u32 type;
	u32 seed;
	u32 regs[V1MIG_NUM_REGS];
	u8 *buf;
	u32 buf_size;
	u32 nblocks;
	unsigned long *dirty;

	u32 device_state;
	/* freeze=pending: _RUNNING was cleared, the device still runs. */
	bool awaiting_freeze;
	u8 *area;
	u32 area_size;
	bool staged;
	u64 data_size;
	u64 data_offset_reads;
	struct v1mig_save save;
	struct v1mig_resume *resume;

	u64 data_rw_bytes;
	u64 mmaps;
};

/*
 * The parent device; its class names the mdev types ("v1mig-a"), as
 * mdev_type_add() prefixes them with dev_driver_string().
 */
static const struct class v1mig_class = { .name = V1MIG_NAME };
static struct device v1mig_parent_dev;
static struct mdev_parent v1mig_parent;

static bool freeze_at_pending(void)
{
	return !strcmp(freeze, "pending");
}

static bool pending_constant(void)
{
	return !strcmp(pending, "constant");
}

static u32 block_len(struct v1mig_state *st, u32 index)
{
	return min_t(u32, V1MIG_BLOCK_SIZE, st->buf_size - index * V1MIG_BLOCK_SIZE);
}

static bool device_runs(struct v1mig_state *st)
{
	return IS_RUNNING(st->device_state) || st->awaiting_freeze;
}

/* The device's own work: what an access to a running device sees. */
static void v1mig_tick(struct v1mig_state *st)
{
	u32 ticks, block, at;

	if (!changing || !device_runs(st))
		return;
	ticks = ++st->regs[REG_TICKS];
	if (ticks % changing)
		return;
	block = (ticks / changing) % st->nblocks;
	at = block * V1MIG_BLOCK_SIZE +
	     ((ticks * 4) % block_len(st, block) & ~3u);
	if (at + sizeof(u32) <= st->buf_size)
		memcpy(st->buf + at, &ticks, sizeof(u32));
	set_bit(block, st->dirty);
}

/* The power-on content, which differs per device (seeded by its UUID). */
static void v1mig_fill(struct v1mig_state *st)
{
	u32 i;

	for (i = 0; i < st->buf_size; i++)
		st->buf[i] = (u8)(st->seed >> (8 * (i % 4))) ^ (u8)(i * 31);
	memset(st->regs, 0, sizeof(st->regs));
	st->regs[REG_ID] = V1MIG_MAGIC ^ st->type;
	st->regs[REG_SCRATCH0] = st->seed;
	st->regs[REG_SCRATCH1] = ~st->seed;
}

static void v1mig_drop_sessions(struct v1mig_state *st)
{
	memset(&st->save, 0, sizeof(st->save));
	if (st->resume) {
		vfree(st->resume->buf);
		kfree(st->resume);
		st->resume = NULL;
	}
	st->staged = false;
	st->data_size = 0;
	st->awaiting_freeze = false;
}

static void v1mig_reset(struct v1mig_state *st)
{
	v1mig_drop_sessions(st);
	v1mig_fill(st);
	st->device_state = VFIO_DEVICE_STATE_V1_RUNNING;
	st->data_offset_reads = 0;
}

/* ---- Saving ------------------------------------------------------------ */

static void put_le32(u8 *at, u32 v)
{
	__le32 le = cpu_to_le32(v);

	memcpy(at, &le, sizeof(le));
}

static u32 get_le32(const u8 *at)
{
	__le32 le;

	memcpy(&le, at, sizeof(le));
	return le32_to_cpu(le);
}

static void set_record(struct v1mig_item *item, u32 kind, u32 index,
		       const u8 *payload, u32 len)
{
	put_le32(item->head, kind);
	put_le32(item->head + 4, index);
	item->head_len = V1MIG_RECORD_HEAD;
	item->payload = payload;
	item->payload_len = len;
	item->pos = 0;
}

/* Picks the next piece of the stream; false when nothing is left now. */
static bool next_item(struct v1mig_state *st)
{
	struct v1mig_save *save = &st->save;
	struct v1mig_item *item = &save->item;
	u32 block;

	if (!save->header_sent) {
		put_le32(item->head, V1MIG_MAGIC);
		put_le32(item->head + 4, V1MIG_VERSION);
		put_le32(item->head + 8, st->type);
		put_le32(item->head + 12, st->buf_size);
		item->head_len = V1MIG_STREAM_HEAD;
		item->payload = NULL;
		item->payload_len = 0;
		item->pos = 0;
		save->header_sent = true;
		return true;
	}
	block = find_first_bit(st->dirty, st->nblocks);
	if (block < st->nblocks) {
		/* Cleared first: a change while it is sent sets it again. */
		clear_bit(block, st->dirty);
		set_record(item, REC_BLOCK, block,
			   st->buf + block * V1MIG_BLOCK_SIZE, block_len(st, block));
		return true;
	}
	if (device_runs(st))
		return false;
	if (!save->regs_sent) {
		save->regs_sent = true;
		set_record(item, REC_REGS, 0, (const u8 *)st->regs, V1MIG_REGS_SIZE);
		return true;
	}
	if (!save->end_sent || bug_pending_never_zero) {
		save->end_sent = true;
		set_record(item, REC_END, 0, NULL, 0);
		return true;
	}
	return false;
}

static u32 item_left(const struct v1mig_item *item)
{
	return item->head_len + item->payload_len - item->pos;
}

/* Bytes of the stream not yet staged, as of now. */
static u64 remaining(struct v1mig_state *st)
{
	struct v1mig_save *save = &st->save;
	u64 left = item_left(&save->item);
	u32 block;

	if (!save->header_sent)
		left += V1MIG_STREAM_HEAD;
	for_each_set_bit(block, st->dirty, st->nblocks)
		left += V1MIG_RECORD_HEAD + block_len(st, block);
	if (!device_runs(st)) {
		if (!save->regs_sent)
			left += V1MIG_RECORD_HEAD + V1MIG_REGS_SIZE;
		if (!save->end_sent || (bug_pending_never_zero && !left))
			left += V1MIG_RECORD_HEAD;
	}
	return left;
}

/* Copies up to len bytes of the stream into the data area. */
static u32 stage(struct v1mig_state *st, u32 len)
{
	struct v1mig_item *item = &st->save.item;
	u32 done = 0;

	while (done < len) {
		u32 n;

		if (!item_left(item) && !next_item(st))
			break;
		if (item->pos < item->head_len) {
			n = min(len - done, item->head_len - item->pos);
			memcpy(st->area + done, item->head + item->pos, n);
		} else {
			u32 at = item->pos - item->head_len;

			n = min(len - done, item->payload_len - at);
			memcpy(st->area + done, item->payload + at, n);
		}
		item->pos += n;
		done += n;
	}
	return done;
}

static u64 read_pending_bytes(struct v1mig_state *st)
{
	struct v1mig_save *save = &st->save;
	u64 left;

	/* freeze=pending: this read is the moment the device stops. */
	st->awaiting_freeze = false;
	if (!save->active)
		return 0;
	/* Reading pending_bytes after data_offset ends the iteration. */
	st->staged = false;
	if (save->pending_valid)
		return save->pending;
	left = remaining(st);
	if (pending_constant() && left > data_size) {
		save->pending_const = max(save->pending_const, left);
		left = save->pending_const;
	}
	save->pending = left;
	save->pending_valid = true;
	return left;
}

static u64 read_data_offset(struct v1mig_state *st)
{
	st->data_offset_reads++;
	if (st->save.active && !st->staged) {
		u32 n = stage(st, min(data_size, st->area_size));

		st->staged = true;
		st->save.pending_valid = false;
		st->data_size = bug_data_size_beyond ? st->area_size + 1 : n;
	}
	if (bug_data_offset_moves && !(st->data_offset_reads & 1))
		return V1MIG_DATA_OFFSET + 8;
	return V1MIG_DATA_OFFSET;
}

static void start_save(struct v1mig_state *st)
{
	memset(&st->save, 0, sizeof(st->save));
	st->save.active = true;
	bitmap_fill(st->dirty, st->nblocks);
}

/* ---- Resuming ---------------------------------------------------------- */

static int begin_record(struct v1mig_state *st, struct v1mig_resume *r)
{
	u32 kind = get_le32(r->head), index = get_le32(r->head + 4);

	switch (kind) {
	case REC_BLOCK:
		if (index >= st->nblocks)
			return -EINVAL;
		r->payload = r->buf + index * V1MIG_BLOCK_SIZE;
		r->payload_left = block_len(st, index);
		return 0;
	case REC_REGS:
		r->payload = (u8 *)r->regs;
		r->payload_left = V1MIG_REGS_SIZE;
		return 0;
	case REC_END:
		r->ended = true;
		return 0;
	}
	return -EINVAL;
}

/* Feeds one chunk of the stream to the parser. */
static int load(struct v1mig_state *st, const u8 *data, u32 len)
{
	struct v1mig_resume *r = st->resume;

	while (len) {
		u32 n;

		if (r->ended)
			return -EINVAL;
		if (r->payload_left) {
			n = min(len, r->payload_left);
			memcpy(r->payload, data, n);
			r->payload += n;
			r->payload_left -= n;
		} else {
			n = min(len, r->head_want - r->head_len);
			memcpy(r->head + r->head_len, data, n);
			r->head_len += n;
			if (r->head_len == r->head_want) {
				int ret = 0;

				if (!r->header_done) {
					if (get_le32(r->head) != V1MIG_MAGIC ||
					    get_le32(r->head + 4) != V1MIG_VERSION ||
					    get_le32(r->head + 8) != st->type ||
					    get_le32(r->head + 12) != st->buf_size)
						ret = -EINVAL;
					r->header_done = true;
				} else {
					ret = begin_record(st, r);
				}
				if (ret)
					return ret;
				r->head_len = 0;
				r->head_want = V1MIG_RECORD_HEAD;
			}
		}
		data += n;
		len -= n;
	}
	return 0;
}

static int start_resume(struct v1mig_state *st)
{
	struct v1mig_resume *r = kzalloc(sizeof(*r), GFP_KERNEL);

	if (!r)
		return -ENOMEM;
	r->buf = vzalloc(st->buf_size);
	if (!r->buf) {
		kfree(r);
		return -ENOMEM;
	}
	r->head_want = V1MIG_STREAM_HEAD;
	st->resume = r;
	return 0;
}

/* A data_size write while resuming: the chunk is consumed before it returns. */
static int write_data_size(struct v1mig_state *st, u64 size)
{
	int ret;

	if (!st->resume || size > st->area_size)
		return -EINVAL;
	st->data_size = size;
	ret = load(st, st->area, size);
	if (ret) {
		/* The device could not load the chunk: error state until reset. */
		v1mig_drop_sessions(st);
		st->device_state = (st->device_state & ~VFIO_DEVICE_STATE_MASK) |
				   VFIO_DEVICE_STATE_V1_SAVING |
				   VFIO_DEVICE_STATE_V1_RESUMING;
	}
	return ret;
}

static void adopt_resume(struct v1mig_state *st)
{
	struct v1mig_resume *r = st->resume;

	memcpy(st->buf, r->buf, st->buf_size);
	memcpy(st->regs, r->regs, sizeof(st->regs));
	/* Registers the stream lacks (a truncated stream) keep their identity. */
	st->regs[REG_ID] = V1MIG_MAGIC ^ st->type;
}

/* ---- device_state ------------------------------------------------------ */

static int write_device_state(struct v1mig_state *st, u32 new)
{
	u32 cur = st->device_state;
	bool valid = VFIO_DEVICE_STATE_VALID(new) &&
		     !VFIO_DEVICE_STATE_IS_ERROR(new);
	int ret;

	/* Only a reset leaves the error state. */
	if (VFIO_DEVICE_STATE_IS_ERROR(cur))
		return -EINVAL;
	if (!valid && !(bug_invalid_state_accepted &&
			!VFIO_DEVICE_STATE_VALID(new)))
		return -EINVAL;

	if (IS_RESUMING(cur) && !IS_RESUMING(new)) {
		if (!st->resume)
			return -EINVAL;
		if (!st->resume->ended && !bug_truncated_resume_accepted)
			return -EINVAL;
		adopt_resume(st);
		v1mig_drop_sessions(st);
	}
	if (IS_RESUMING(new) && !IS_RESUMING(cur)) {
		v1mig_drop_sessions(st);
		ret = start_resume(st);
		if (ret)
			return ret;
	}
	if (!IS_SAVING(new))
		memset(&st->save, 0, sizeof(st->save));
	else if (!st->save.active)
		start_save(st);
	else if (IS_RUNNING(new) != IS_RUNNING(cur))
		st->save.pending_const = 0;
	/* A new phase starts a new iteration. */
	st->save.pending_valid = false;

	if (IS_RUNNING(cur) && !IS_RUNNING(new) && freeze_at_pending())
		st->awaiting_freeze = true;
	if (IS_RUNNING(new))
		st->awaiting_freeze = false;
	st->device_state = new;
	return 0;
}

/* ---- Region access ----------------------------------------------------- */

static ssize_t migration_rw(struct v1mig_state *st, char __user *ubuf,
			    size_t count, u64 pos, bool write)
{
	u64 value;

	if (pos >= V1MIG_DATA_OFFSET) {
		u64 at = pos - V1MIG_DATA_OFFSET;

		if (at >= st->area_size || count > st->area_size - at)
			return -EINVAL;
		if (write ? copy_from_user(st->area + at, ubuf, count) :
			    copy_to_user(ubuf, st->area + at, count))
			return -EFAULT;
		st->data_rw_bytes += count;
		return count;
	}

#define FIELD(f) offsetof(struct vfio_device_migration_info, f)
#define IS_FIELD(f) (pos == FIELD(f) && \
		     count == sizeof_field(struct vfio_device_migration_info, f))
	if (write) {
		u64 v = 0;

		if (count != 4 && count != 8)
			return -EINVAL;
		if (copy_from_user(&v, ubuf, count))
			return -EFAULT;
		v = le64_to_cpu((__force __le64)v);
		if (IS_FIELD(device_state)) {
			int ret = write_device_state(st, (u32)v);

			return ret ? ret : count;
		}
		if (IS_FIELD(reserved))
			return count;
		if (IS_FIELD(data_size)) {
			int ret = write_data_size(st, v);

			return ret ? ret : count;
		}
		/* pending_bytes and data_offset are read-only. */
		return -EINVAL;
	}

	if (IS_FIELD(device_state))
		value = st->device_state;
	else if (IS_FIELD(reserved))
		value = 0;
	else if (IS_FIELD(pending_bytes))
		value = read_pending_bytes(st);
	else if (IS_FIELD(data_offset))
		value = read_data_offset(st);
	else if (IS_FIELD(data_size))
		value = st->data_size;
	else
		return -EINVAL;
#undef IS_FIELD
#undef FIELD
	{
		__le64 le = cpu_to_le64(value);

		if (copy_to_user(ubuf, &le, count))
			return -EFAULT;
	}
	return count;
}

static ssize_t regs_rw(struct v1mig_state *st, char __user *ubuf,
		       size_t count, u64 pos, bool write)
{
	u32 reg = pos / sizeof(u32);
	__le32 le;

	if (count != sizeof(u32) || pos % sizeof(u32) || reg >= V1MIG_NUM_REGS)
		return -EINVAL;
	if (!write) {
		le = cpu_to_le32(st->regs[reg]);
		return copy_to_user(ubuf, &le, count) ? -EFAULT : count;
	}
	if (reg < REG_SCRATCH0)
		return -EINVAL;
	/* A stopped device does not change. */
	if (!device_runs(st))
		return -EBUSY;
	if (copy_from_user(&le, ubuf, count))
		return -EFAULT;
	st->regs[reg] = le32_to_cpu(le);
	return count;
}

static ssize_t buffer_rw(struct v1mig_state *st, char __user *ubuf,
			 size_t count, u64 pos, bool write)
{
	u32 first, last;

	if (pos >= st->buf_size || count > st->buf_size - pos)
		return -EINVAL;
	if (!write)
		return copy_to_user(ubuf, st->buf + pos, count) ? -EFAULT : count;
	if (!device_runs(st))
		return -EBUSY;
	if (copy_from_user(st->buf + pos, ubuf, count))
		return -EFAULT;
	first = pos / V1MIG_BLOCK_SIZE;
	last = (pos + count - 1) / V1MIG_BLOCK_SIZE;
	bitmap_set(st->dirty, first, last - first + 1);
	return count;
}

static ssize_t v1mig_rw(struct vfio_device *vdev, char __user *ubuf,
			size_t count, loff_t *ppos, bool write)
{
	struct v1mig_state *st = container_of(vdev, struct v1mig_state, vdev);
	u64 index = (u64)*ppos >> V1MIG_OFFSET_SHIFT;
	u64 pos = (u64)*ppos & V1MIG_OFFSET_MASK;
	ssize_t ret;

	if (!count)
		return 0;
	mutex_lock(&st->lock);
	v1mig_tick(st);
	switch (index) {
	case V1MIG_REGS_INDEX:
		ret = regs_rw(st, ubuf, count, pos, write);
		break;
	case V1MIG_BUFFER_INDEX:
		ret = buffer_rw(st, ubuf, count, pos, write);
		break;
	case V1MIG_MIGRATION_INDEX:
		ret = migration_rw(st, ubuf, count, pos, write);
		break;
	default:
		ret = -EINVAL;
	}
	mutex_unlock(&st->lock);
	if (ret > 0)
		*ppos += ret;
	return ret;
}

static ssize_t v1mig_read(struct vfio_device *vdev, char __user *ubuf,
			  size_t count, loff_t *ppos)
{
	return v1mig_rw(vdev, ubuf, count, ppos, false);
}

static ssize_t v1mig_write(struct vfio_device *vdev, const char __user *ubuf,
			   size_t count, loff_t *ppos)
{
	return v1mig_rw(vdev, (char __user *)ubuf, count, ppos, true);
}

/* Only the data area is mappable, whole pages of it. */
static int v1mig_mmap(struct vfio_device *vdev, struct vm_area_struct *vma)
{
	struct v1mig_state *st = container_of(vdev, struct v1mig_state, vdev);
	u64 offset = (u64)vma->vm_pgoff << PAGE_SHIFT;
	u64 pos = offset & V1MIG_OFFSET_MASK;
	u64 len = vma->vm_end - vma->vm_start;
	int ret;

	if (!use_mmap || offset >> V1MIG_OFFSET_SHIFT != V1MIG_MIGRATION_INDEX)
		return -EINVAL;
	if (!(vma->vm_flags & VM_SHARED) || pos < V1MIG_DATA_OFFSET ||
	    pos - V1MIG_DATA_OFFSET + len > st->area_size)
		return -EINVAL;
	ret = remap_vmalloc_range(vma, st->area,
				  (pos - V1MIG_DATA_OFFSET) >> PAGE_SHIFT);
	if (ret)
		return ret;
	mutex_lock(&st->lock);
	st->mmaps++;
	mutex_unlock(&st->lock);
	return 0;
}

/* ---- ioctls ------------------------------------------------------------ */

static int migration_region_info(struct v1mig_state *st,
				 struct vfio_region_info *info,
				 struct vfio_info_cap *caps)
{
	struct vfio_region_info_cap_type type = {
		.header.id = VFIO_REGION_INFO_CAP_TYPE,
		.header.version = 1,
		.type = VFIO_REGION_TYPE_MIGRATION_DEPRECATED,
		.subtype = VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED,
	};
	int ret;

	info->size = V1MIG_DATA_OFFSET + st->area_size;
	ret = vfio_info_add_capability(caps, &type.header, sizeof(type));
	if (ret || !use_mmap)
		return ret;
	{
		struct vfio_region_info_cap_sparse_mmap *sparse;
		size_t size = struct_size(sparse, areas, 1);

		sparse = kzalloc(size, GFP_KERNEL);
		if (!sparse)
			return -ENOMEM;
		sparse->header.id = VFIO_REGION_INFO_CAP_SPARSE_MMAP;
		sparse->header.version = 1;
		sparse->nr_areas = 1;
		sparse->areas[0].offset = V1MIG_DATA_OFFSET;
		sparse->areas[0].size = st->area_size;
		ret = vfio_info_add_capability(caps, &sparse->header, size);
		kfree(sparse);
		info->flags |= VFIO_REGION_INFO_FLAG_MMAP;
	}
	return ret;
}

static long region_info_ioctl(struct v1mig_state *st, void __user *arg)
{
	unsigned long minsz = offsetofend(struct vfio_region_info, offset);
	struct vfio_info_cap caps = { .buf = NULL, .size = 0 };
	struct vfio_region_info info;
	int ret = 0;

	if (copy_from_user(&info, arg, minsz))
		return -EFAULT;
	if (info.argsz < minsz)
		return -EINVAL;
	info.offset = V1MIG_INDEX_TO_OFFSET(info.index);
	info.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
	info.cap_offset = 0;
	switch (info.index) {
	case V1MIG_REGS_INDEX:
		info.size = V1MIG_REGS_SIZE;
		break;
	case V1MIG_BUFFER_INDEX:
		info.size = st->buf_size;
		break;
	case V1MIG_MIGRATION_INDEX:
		ret = migration_region_info(st, &info, &caps);
		break;
	default:
		return -EINVAL;
	}
	if (ret)
		goto out;
	if (caps.size) {
		info.flags |= VFIO_REGION_INFO_FLAG_CAPS;
		if (info.argsz < sizeof(info) + caps.size) {
			/* Too small for the chain: say how much is needed. */
			info.argsz = sizeof(info) + caps.size;
		} else {
			vfio_info_cap_shift(&caps, sizeof(info));
			if (copy_to_user(arg + sizeof(info), caps.buf, caps.size)) {
				ret = -EFAULT;
				goto out;
			}
			info.cap_offset = sizeof(info);
		}
	}
	if (copy_to_user(arg, &info, minsz))
		ret = -EFAULT;
out:
	kfree(caps.buf);
	return ret;
}

static long v1mig_ioctl(struct vfio_device *vdev, unsigned int cmd,
			unsigned long arg)
{
	struct v1mig_state *st = container_of(vdev, struct v1mig_state, vdev);
	unsigned long minsz;
	long ret;

	switch (cmd) {
	case VFIO_DEVICE_GET_INFO: {
		struct vfio_device_info info;

		minsz = offsetofend(struct vfio_device_info, num_irqs);
		if (copy_from_user(&info, (void __user *)arg, minsz))
			return -EFAULT;
		if (info.argsz < minsz)
			return -EINVAL;
		info.flags = VFIO_DEVICE_FLAGS_RESET;
		info.num_regions = V1MIG_NUM_REGIONS;
		info.num_irqs = 0;
		return copy_to_user((void __user *)arg, &info, minsz) ? -EFAULT : 0;
	}
	case VFIO_DEVICE_GET_REGION_INFO:
		mutex_lock(&st->lock);
		ret = region_info_ioctl(st, (void __user *)arg);
		mutex_unlock(&st->lock);
		return ret;
	case VFIO_DEVICE_RESET:
		mutex_lock(&st->lock);
		v1mig_reset(st);
		mutex_unlock(&st->lock);
		return 0;
	}
	return -ENOTTY;
}

/* ---- Device life cycle ------------------------------------------------- */

static int v1mig_init_dev(struct vfio_device *vdev)
{
	struct v1mig_state *st = container_of(vdev, struct v1mig_state, vdev);
	struct mdev_device *mdev = to_mdev_device(vdev->dev);
	struct v1mig_type *type = container_of(mdev->type, struct v1mig_type, type);
	u32 size = type->id == 1 ? state_size : state_size / 2;

	if (!size || size > V1MIG_MAX_STATE || !data_size ||
	    data_size > V1MIG_MAX_STATE)
		return -EINVAL;
	mutex_init(&st->lock);
	st->type = type->id;
	st->seed = jhash(&mdev->uuid, sizeof(mdev->uuid), 0);
	st->buf_size = size;
	st->nblocks = DIV_ROUND_UP(size, V1MIG_BLOCK_SIZE);
	st->area_size = PAGE_ALIGN(data_size);
	st->buf = vzalloc(size);
	st->dirty = bitmap_zalloc(st->nblocks, GFP_KERNEL);
	/* vmalloc_user: zeroed and mappable into user space. */
	st->area = vmalloc_user(st->area_size);
	if (!st->buf || !st->dirty || !st->area) {
		vfree(st->area);
		bitmap_free(st->dirty);
		vfree(st->buf);
		return -ENOMEM;
	}
	v1mig_reset(st);
	return 0;
}

static void v1mig_release_dev(struct vfio_device *vdev)
{
	struct v1mig_state *st = container_of(vdev, struct v1mig_state, vdev);

	v1mig_drop_sessions(st);
	vfree(st->area);
	bitmap_free(st->dirty);
	vfree(st->buf);
	mutex_destroy(&st->lock);
}

/* Every open starts from a device in _RUNNING, as after a reset. */
static int v1mig_open_device(struct vfio_device *vdev)
{
	struct v1mig_state *st = container_of(vdev, struct v1mig_state, vdev);

	mutex_lock(&st->lock);
	v1mig_reset(st);
	mutex_unlock(&st->lock);
	return 0;
}

static void v1mig_close_device(struct vfio_device *vdev)
{
	struct v1mig_state *st = container_of(vdev, struct v1mig_state, vdev);

	mutex_lock(&st->lock);
	v1mig_drop_sessions(st);
	mutex_unlock(&st->lock);
}

static const struct vfio_device_ops v1mig_dev_ops = {
	.name = "vfio-v1mig",
	.init = v1mig_init_dev,
	.release = v1mig_release_dev,
	.open_device = v1mig_open_device,
	.close_device = v1mig_close_device,
	.read = v1mig_read,
	.write = v1mig_write,
	.mmap = v1mig_mmap,
	.ioctl = v1mig_ioctl,
	.bind_iommufd = vfio_iommufd_emulated_bind,
	.unbind_iommufd = vfio_iommufd_emulated_unbind,
	.attach_ioas = vfio_iommufd_emulated_attach_ioas,
	.detach_ioas = vfio_iommufd_emulated_detach_ioas,
};

static int v1mig_probe(struct mdev_device *mdev)
{
	struct v1mig_state *st;
	int ret;

	st = vfio_alloc_device(v1mig_state, vdev, &mdev->dev, &v1mig_dev_ops);
	if (IS_ERR(st))
		return PTR_ERR(st);
	ret = vfio_register_emulated_iommu_dev(&st->vdev);
	if (ret) {
		vfio_put_device(&st->vdev);
		return ret;
	}
	dev_set_drvdata(&mdev->dev, st);
	return 0;
}

static void v1mig_remove(struct mdev_device *mdev)
{
	struct v1mig_state *st = dev_get_drvdata(&mdev->dev);

	vfio_unregister_group_dev(&st->vdev);
	vfio_put_device(&st->vdev);
}

/* /sys/bus/mdev/devices/UUID/v1mig/: how the data area was used. */
static ssize_t data_rw_bytes_show(struct device *dev,
				  struct device_attribute *attr, char *buf)
{
	struct v1mig_state *st = dev_get_drvdata(dev);
	u64 v;

	mutex_lock(&st->lock);
	v = st->data_rw_bytes;
	mutex_unlock(&st->lock);
	return sysfs_emit(buf, "%llu\n", v);
}
static DEVICE_ATTR_RO(data_rw_bytes);

static ssize_t mmaps_show(struct device *dev, struct device_attribute *attr,
			  char *buf)
{
	struct v1mig_state *st = dev_get_drvdata(dev);
	u64 v;

	mutex_lock(&st->lock);
	v = st->mmaps;
	mutex_unlock(&st->lock);
	return sysfs_emit(buf, "%llu\n", v);
}
static DEVICE_ATTR_RO(mmaps);

static struct attribute *v1mig_dev_attrs[] = {
	&dev_attr_data_rw_bytes.attr,
	&dev_attr_mmaps.attr,
	NULL,
};

static const struct attribute_group v1mig_dev_group = {
	.name = V1MIG_NAME,
	.attrs = v1mig_dev_attrs,
};

static const struct attribute_group *v1mig_dev_groups[] = {
	&v1mig_dev_group,
	NULL,
};

static struct mdev_driver v1mig_driver = {
	.device_api = VFIO_DEVICE_API_PLATFORM_STRING,
	.max_instances = 16,
	.driver = {
		.name = V1MIG_NAME,
		.owner = THIS_MODULE,
		.mod_name = KBUILD_MODNAME,
		.dev_groups = v1mig_dev_groups,
	},
	.probe = v1mig_probe,
	.remove = v1mig_remove,
};

/* Static, so nothing to free; the core wants a release all the same. */
static void v1mig_parent_release(struct device *dev)
{
}

static int __init v1mig_init(void)
{
	int ret;

	if (strcmp(freeze, "running") && strcmp(freeze, "pending")) {
		pr_err("v1mig: freeze=%s: want running or pending\n", freeze);
		return -EINVAL;
	}
	if (strcmp(pending, "decreasing") && strcmp(pending, "constant")) {
		pr_err("v1mig: pending=%s: want decreasing or constant\n", pending);
		return -EINVAL;
	}
	ret = mdev_register_driver(&v1mig_driver);
	if (ret)
		return ret;
	ret = class_register(&v1mig_class);
	if (ret)
		goto err_driver;
	v1mig_parent_dev.class = &v1mig_class;
	v1mig_parent_dev.release = v1mig_parent_release;
	dev_set_name(&v1mig_parent_dev, V1MIG_NAME);
	ret = device_register(&v1mig_parent_dev);
	if (ret)
		goto err_put;
	ret = mdev_register_parent(&v1mig_parent, &v1mig_parent_dev, &v1mig_driver,
				   v1mig_mdev_types, ARRAY_SIZE(v1mig_mdev_types));
	if (ret)
		goto err_device;
	return 0;

err_device:
	device_del(&v1mig_parent_dev);
err_put:
	put_device(&v1mig_parent_dev);
	class_unregister(&v1mig_class);
err_driver:
	mdev_unregister_driver(&v1mig_driver);
	return ret;
}

static void __exit v1mig_exit(void)
{
	mdev_unregister_parent(&v1mig_parent);
	device_unregister(&v1mig_parent_dev);
	class_unregister(&v1mig_class);
	mdev_unregister_driver(&v1mig_driver);
}

module_init(v1mig_init);
module_exit(v1mig_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Reference mdev driver for VFIO migration protocol v1");
