/*
 * virtio_rng: drives a virtio entropy device (PCI, modern) through the runtime's virtio core:
 * feature negotiation, one split queue, a polled request, then an MSI-X completed request.
 * With hostile=1 it then hands the device a descriptor outside guest memory and reports what
 * the device did (it must flag DEVICE_NEEDS_RESET), resets it and checks it works again.
 */
#include "virtio.h"

#define MSIX_VECTOR 0x41
static struct virtq queue;
static u8 buffer[64];

static int all_zero(const u8 *p, u32 n) { while (n--) if (*p++) return 0; return 1; }

static int set_up(struct virtio_dev *dev, int with_msix) {
    if (virtio_negotiate(dev, VIRTIO_F_VERSION_1) != VIRTIO_F_VERSION_1) return 0;
    if (!virtq_setup(dev, &queue, 0, 16, with_msix ? 0 : 0xFFFF)) return 0;
    if (with_msix) virtio_msix_route(dev, 0, MSIX_VECTOR);
    virtio_driver_ok(dev);
    return 1;
}

static u32 request(u64 timeout) {
    u32 length = 0;
    memset(buffer, 0, sizeof(buffer));
    virtq_post(&queue, buffer, 32, 1);
    for (u64 end = rdtsc() + timeout; !virtq_take_used(&queue, &length);)
        if (rdtsc() > end) return 0;
    return length;
}

void main(void) {
    struct virtio_dev dev;
    if (!virtio_find(&dev, 4)) { RESULT("virtio_rng", "%s", "absent"); exit(2); }
    RESULT("virtio_rng", "%s", "found");
    if (!set_up(&dev, 0)) { RESULT("setup", "%s", "failed"); exit(3); }
    u32 got = request(10000000000UL);
    RESULT("polled_bytes", "%u", got);
    RESULT("polled_random", "%d", got && !all_zero(buffer, got));

    if (!set_up(&dev, 1)) { RESULT("setup", "%s", "failed"); exit(3); }
    u64 before = irq_count[MSIX_VECTOR];
    memset(buffer, 0, sizeof(buffer));
    virtq_post(&queue, buffer, 32, 1);
    int woke = wait_irq(MSIX_VECTOR, 10000000000UL);
    u32 length = 0;
    int used = virtq_take_used(&queue, &length);
    RESULT("msix_interrupts", "%lu", irq_count[MSIX_VECTOR] - before);
    RESULT("msix_bytes", "%u", woke && used ? length : 0);

    if (cmdline_u64("hostile", 0)) {
        if (!set_up(&dev, 0)) exit(3);
        u16 head = queue.next_avail % queue.size;
        queue.desc[head] = (struct virtq_desc){ 0x7FFFFFFF0000UL, 4096, VIRTQ_DESC_F_WRITE, 0 };
        queue.avail.ring[head] = head;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        queue.avail.idx = ++queue.next_avail;
        *queue.notify = 0;
        /* The device serves the kick when it gets to it (an I/O thread may): wait for its verdict. */
        u8 status = virtio_status(&dev);
        for (u64 end = rdtsc() + 3000000000UL; !(status & VIRTIO_STATUS_NEEDS_RESET) && rdtsc() < end;)
            status = virtio_status(&dev);
        RESULT("hostile_status", "%x", status);
        RESULT("hostile_used", "%d", virtq_take_used(&queue, 0));
        int again = set_up(&dev, 0);
        RESULT("after_reset_bytes", "%u", again ? request(10000000000UL) : 0);
    }
    exit(0);
}
