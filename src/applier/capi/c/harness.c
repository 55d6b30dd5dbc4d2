/*
 * The C test of the otadelta applier: firmware-style C that links libotadelta.a through
 * include/otadelta.h and applies an A/B delta and an in-place delta on simulated NOR flash,
 * cutting the power at every journal save (just before, at, and inside it) and at 300 random
 * moments (up to four cuts in one update), the plans of tests/it/delta_inplace.rs. After every
 * plan the slot must hold new exactly. It also checks that a corrupt delta and a wrong old
 * image are refused before anything is written, and reports the work memory and the stack
 * high-water mark of one apply. Given a third delta, a patch-from one (method 2: LZMA whose
 * window the applier reads back from old and from the new slot), it runs the A/B plans on it
 * too.
 *
 * Usage: harness OLD NEW AB_DELTA IN_PLACE_DELTA [PLANS [PATCH_FROM_DELTA]]
 * PLANS (0 or absent: all) caps the plans per delta: every k-th journal save, and PLANS / 2
 * random plans instead of 300 (an emulated CPU is slow on a large image). Exit status 0 when every
 * check passed. Built and run by tests/it/delta_capi.rs (host gcc) and
 * by `cargo xtask applier-mcu` (arm-none-eabi-gcc, on an emulated Cortex-M4 with semihosting).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "otadelta.h"

#define FAIL(...) do { printf("FAIL: " __VA_ARGS__); printf("\n"); exit(1); } while (0)
#define CUT_CODE (-77)

/* ---- NOR flash: erased bytes read 0xff, only erased bytes may be programmed, whole-unit
 * erases. Every programmed byte and erased unit is one step; when the budget runs out the
 * operation in progress is torn and every later one fails until the next boot. ---- */
typedef struct {
    uint8_t *mem;
    uint64_t len, unit;
    int64_t budget; /* -1: steady supply */
    uint64_t steps;
    uint64_t journal_at;
    uint64_t saves[4096];
    size_t n_saves;
    uint64_t seed;
} nor;

static uint8_t noise(nor *f) {
    f->seed ^= f->seed << 13; f->seed ^= f->seed >> 7; f->seed ^= f->seed << 17;
    return (uint8_t)f->seed;
}

static int step(nor *f) {
    if (f->budget == 0) return CUT_CODE;
    if (f->budget > 0) f->budget--;
    f->steps++;
    return 0;
}

static int32_t nor_read(void *ctx, uint64_t addr, uint8_t *buf, size_t len) {
    nor *f = ctx;
    if (f->budget == 0) return CUT_CODE;
    if (addr + len > f->len) FAIL("read %llu+%lu outside the flash", (unsigned long long)addr, (unsigned long)len);
    memcpy(buf, f->mem + addr, len);
    return 0;
}

static int32_t nor_erase(void *ctx, uint64_t addr, uint64_t len) {
    nor *f = ctx;
    if (addr % f->unit || len % f->unit || addr + len > f->len)
        FAIL("erase %llu+%llu is not whole units inside the flash", (unsigned long long)addr,
             (unsigned long long)len);
    for (uint64_t u = addr; u < addr + len; u += f->unit) {
        if (step(f)) {
            for (uint64_t i = u; i < u + f->unit; i++) {
                uint8_t n = noise(f);
                if (!(n & 1)) f->mem[i] = 0xff; else if (!(n & 2)) f->mem[i] &= n;
            }
            return CUT_CODE;
        }
        memset(f->mem + u, 0xff, f->unit);
    }
    return 0;
}

static int32_t nor_write(void *ctx, uint64_t addr, const uint8_t *data, size_t len) {
    nor *f = ctx;
    if (addr + len > f->len) FAIL("write outside the flash");
    if (addr >= f->journal_at && f->n_saves < 4096) f->saves[f->n_saves++] = f->steps;
    for (size_t i = 0; i < len; i++) {
        if (f->mem[addr + i] != 0xff) FAIL("programming byte %llu, which is not erased",
                                           (unsigned long long)(addr + i));
        if (step(f)) { f->mem[addr + i] = data[i] | noise(f); return CUT_CODE; }
        f->mem[addr + i] = data[i];
    }
    return 0;
}

/* ---- Files and plain byte readers ---- */
typedef struct { uint8_t *data; uint64_t len; } blob;

static blob load(const char *path) {
    blob b = {0, 0};
    FILE *f = fopen(path, "rb");
    if (!f) FAIL("cannot open %s", path);
    size_t cap = 1 << 16;
    b.data = malloc(cap);
    size_t n;
    while ((n = fread(b.data + b.len, 1, cap - b.len, f)) > 0) {
        b.len += n;
        if (b.len == cap) { cap *= 2; b.data = realloc(b.data, cap); }
    }
    fclose(f);
    return b;
}

static int32_t blob_read(void *ctx, uint64_t addr, uint8_t *buf, size_t len) {
    blob *b = ctx;
    if (addr + len > b->len) return -1;
    memcpy(buf, b->data + addr, len);
    return 0;
}

/* ---- Work memory: what an MCU would reserve statically ---- */
static uint16_t probs[2 * 2615];
static uint8_t dict[8192];
static uint32_t covers[3 * OTADELTA_MCU_COVERS];

static OtadeltaWork work_for(const blob *delta) {
    OtadeltaReader r = {(void *)delta, blob_read, delta->len};
    OtadeltaInfo info;
    int rc = otadelta_inspect(&r, &info);
    if (rc) FAIL("inspect: %s", otadelta_error_message(rc));
    if (info.probs_len > sizeof probs / 2 || info.dict_len > sizeof dict)
        FAIL("the delta needs %lu probabilities and %lu dictionary bytes", (unsigned long)info.probs_len,
             (unsigned long)info.dict_len);
    OtadeltaWork w = {probs, info.probs_len, dict, info.dict_len, covers, OTADELTA_MCU_COVERS};
    return w;
}

/* ---- A device: a NOR holding the slot(s) and the journal ---- */
typedef struct {
    nor f;
    uint64_t slot_len; /* in place: the slot; A/B: the new slot */
    int in_place;
} device;

static void boot(device *d, const blob *old, uint64_t slot_len, int in_place, uint64_t seed) {
    uint64_t unit = 512;
    d->slot_len = slot_len;
    d->in_place = in_place;
    d->f.unit = unit;
    d->f.journal_at = slot_len;
    d->f.len = slot_len + 2 * unit;
    free(d->f.mem);
    d->f.mem = malloc(d->f.len);
    memset(d->f.mem, 0xff, d->f.len);
    if (in_place) memcpy(d->f.mem, old->data, old->len);
    d->f.budget = -1;
    d->f.steps = 0;
    d->f.n_saves = 0;
    d->f.seed = seed | 1;
}

static int run(device *d, const blob *old, const blob *delta, int64_t budget) {
    d->f.budget = budget;
    d->f.steps = 0;
    OtadeltaReader dr = {(void *)delta, blob_read, delta->len};
    OtadeltaReader oldr = {(void *)old, blob_read, old->len};
    OtadeltaFlash fl = {&d->f, nor_read, nor_erase, nor_write};
    OtadeltaJournal j = {fl, d->slot_len, d->f.unit};
    OtadeltaWork w = work_for(delta);
    if (d->in_place) return otadelta_apply_in_place(&dr, NULL, &fl, d->slot_len, &j, &w);
    return otadelta_apply_ab(&dr, NULL, &oldr, &fl, d->slot_len, 1024, &j, &w);
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(uint64_t n) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return n ? rng % n : 0;
}

/* ---- Stack high-water: paint, run, find the deepest byte touched ---- */
#define PAINT 24576
static uintptr_t painted_at;
__attribute__((noinline)) static void paint(void) {
    volatile uint8_t area[PAINT];
    for (size_t i = 0; i < PAINT; i++) area[i] = 0xa5;
    painted_at = (uintptr_t)area;
}
/* The painted bytes lie below main's frame, where the apply's frames went: the lowest one
 * no longer painted is the deepest the stack reached (counted from the painted area's top,
 * where the apply's first frame starts). */
__attribute__((noinline)) static size_t touched(void) {
    volatile uint8_t *area = (volatile uint8_t *)painted_at;
    size_t i = 0;
    while (i < PAINT && area[i] == 0xa5) i++;
    return PAINT - i;
}

/* Runs every power-cut plan for one delta; returns the number of cuts. */
static unsigned max_plans = 0; /* 0: every plan */

static unsigned plans(const char *what, const blob *old, const blob *new_, const blob *delta,
                      uint64_t slot_len, int in_place) {
    device d = {0};
    boot(&d, old, slot_len, in_place, 1);
    int rc = run(&d, old, delta, -1);
    if (rc) FAIL("%s: uninterrupted apply: %s", what, otadelta_error_message(rc));
    if (memcmp(d.f.mem, new_->data, new_->len)) FAIL("%s: uninterrupted apply differs from new", what);
    uint64_t total = d.f.steps;
    size_t n_saves = d.f.n_saves;
    static uint64_t saves[4096];
    memcpy(saves, d.f.saves, n_saves * sizeof saves[0]);
    if (n_saves < 4) FAIL("%s: only %lu journal saves", what, (unsigned long)n_saves);
    unsigned cuts = 0, n_plans = 0;
    size_t stride = 1, randoms = 300;
    if (max_plans) {
        stride = (3 * n_saves + max_plans / 2 - 1) / (max_plans / 2 ? max_plans / 2 : 1);
        if (stride == 0) stride = 1;
        randoms = max_plans / 2;
    }
    for (size_t p = 0; p < 3 * n_saves + randoms; p++) {
        int64_t plan[4];
        int k;
        if (p < 3 * n_saves && p % stride) continue;
        if (p < 3 * n_saves) {
            uint64_t s = saves[p / 3];
            plan[0] = (int64_t)(p % 3 == 0 ? (s ? s - 1 : 0) : p % 3 == 1 ? s : s + 7);
            k = 1;
        } else {
            k = 1 + (int)rnd(4);
            for (int i = 0; i < k; i++) plan[i] = (int64_t)rnd(total);
        }
        boot(&d, old, slot_len, in_place, p + 2);
        for (int i = 0; i < k; i++) {
            rc = run(&d, old, delta, plan[i]);
            if (rc == OTADELTA_OK) break;
            if (d.f.budget != 0 || (rc != OTADELTA_ERR_FLASH && rc != OTADELTA_ERR_JOURNAL))
                FAIL("%s: plan %lu: not a power cut: %s", what, (unsigned long)p, otadelta_error_message(rc));
            cuts++;
        }
        rc = run(&d, old, delta, -1);
        if (rc) FAIL("%s: plan %lu: resuming: %s", what, (unsigned long)p, otadelta_error_message(rc));
        if (memcmp(d.f.mem, new_->data, new_->len)) FAIL("%s: plan %lu: the slot differs from new", what, (unsigned long)p);
        rc = run(&d, old, delta, -1);
        if (rc) FAIL("%s: plan %lu: a finished update is not accepted again: %s", what, (unsigned long)p,
                     otadelta_error_message(rc));
        n_plans++;
    }
    printf("%s: %u plans, %u power cuts, new rebuilt every time (%llu flash steps, %lu journal saves)\n",
           what, n_plans, cuts, (unsigned long long)total, (unsigned long)n_saves);
    free(d.f.mem);
    return cuts;
}

static void refusals(const blob *old, const blob *delta, uint64_t slot_len) {
    device d = {0};
    blob bad = {malloc(delta->len), delta->len};
    memcpy(bad.data, delta->data, delta->len);
    bad.data[delta->len / 2] ^= 0x40;
    boot(&d, old, slot_len, 1, 3);
    int rc = run(&d, old, &bad, -1);
    if (rc != OTADELTA_ERR_DIGEST) FAIL("a corrupt delta gave %s", otadelta_error_message(rc));
    if (d.f.steps) FAIL("a corrupt delta changed the flash");
    blob other = {malloc(old->len), old->len};
    memcpy(other.data, old->data, old->len);
    other.data[100] ^= 1;
    boot(&d, &other, slot_len, 1, 3);
    rc = run(&d, &other, delta, -1);
    if (rc != OTADELTA_ERR_WRONG_OLD) FAIL("a wrong old image gave %s", otadelta_error_message(rc));
    if (d.f.steps) FAIL("a wrong old image changed the flash");
    uint64_t small = (old->len + 1023) / 1024 * 1024;
    if (small >= slot_len) FAIL("no slot between old and the layout's to try");
    boot(&d, old, small, 1, 3);
    rc = run(&d, old, delta, -1);
    if (rc != OTADELTA_ERR_SLOT_TOO_SMALL) FAIL("a small slot gave %s", otadelta_error_message(rc));
    printf("refused: a corrupt delta, a wrong old image, a small slot; flash untouched\n");
    free(bad.data);
    free(other.data);
    free(d.f.mem);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc < 5 || argc > 7) {
        printf("usage: harness OLD NEW AB_DELTA IN_PLACE_DELTA [PLANS [PATCH_FROM_DELTA]]\n");
        return 2;
    }
    if (argc >= 6) max_plans = (unsigned)strtoul(argv[5], NULL, 10);
    blob old = load(argv[1]), new_ = load(argv[2]), ab = load(argv[3]), ip = load(argv[4]);
    OtadeltaReader r = {&ip, blob_read, ip.len};
    OtadeltaInfo info;
    if (otadelta_inspect(&r, &info) || !info.in_place) FAIL("the in-place delta is not one");
    OtadeltaReader rab = {&ab, blob_read, ab.len};
    OtadeltaInfo ab_info;
    if (otadelta_inspect(&rab, &ab_info) || ab_info.in_place) FAIL("the A/B delta is not one");
    printf("pointers: A/B %u, in place %u\n", (unsigned)ab_info.abs_pointers, (unsigned)info.abs_pointers);
    uint64_t ab_slot = (new_.len + 1023) / 1024 * 1024;

    /* One uninterrupted apply of each delta with the stack painted. */
    device d = {0};
    boot(&d, &old, ab_slot, 0, 1);
    paint();
    int rc = run(&d, &old, &ab, -1);
    size_t stack_ab = touched();
    if (rc) FAIL("A/B apply: %s", otadelta_error_message(rc));
    boot(&d, &old, info.slot_needed, 1, 1);
    paint();
    rc = run(&d, &old, &ip, -1);
    size_t stack_ip = touched();
    if (rc) FAIL("in-place apply: %s", otadelta_error_message(rc));
    OtadeltaWork w = work_for(&ab);
    printf("work memory: %lu B probabilities + %lu B dictionary + %lu B table (%u covers); "
           "stack high-water of one apply: A/B %lu B, in place %lu B\n",
           (unsigned long)(w.probs_len * 2), (unsigned long)w.dict_len,
           (unsigned long)(12 * OTADELTA_MCU_COVERS), (unsigned)OTADELTA_MCU_COVERS,
           (unsigned long)stack_ab, (unsigned long)stack_ip);
    free(d.f.mem);
    d.f.mem = NULL;

    unsigned cuts = plans("A/B", &old, &new_, &ab, ab_slot, 0);
    cuts += plans("in place", &old, &new_, &ip, info.slot_needed, 1);
    if (argc == 7) {
        blob pf = load(argv[6]);
        OtadeltaReader rpf = {&pf, blob_read, pf.len};
        OtadeltaInfo pf_info;
        if (otadelta_inspect(&rpf, &pf_info) || pf_info.in_place) FAIL("the patch-from delta is not an A/B one");
        boot(&d, &old, ab_slot, 0, 1);
        paint();
        rc = run(&d, &old, &pf, -1);
        size_t stack_pf = touched();
        if (rc) FAIL("patch-from apply: %s", otadelta_error_message(rc));
        if (memcmp(d.f.mem, new_.data, new_.len)) FAIL("patch-from: the slot differs from new");
        w = work_for(&pf);
        printf("patch-from: work memory %lu B probabilities + %lu B tail, no table; stack high-water "
               "of one apply %lu B\n",
               (unsigned long)(w.probs_len * 2), (unsigned long)w.dict_len, (unsigned long)stack_pf);
        free(d.f.mem);
        d.f.mem = NULL;
        cuts += plans("A/B patch-from", &old, &new_, &pf, ab_slot, 0);
        free(pf.data);
    }
    refusals(&old, &ip, info.slot_needed);
    printf("c harness: every check passed (%u power cuts in all)\n", cuts);
    free(old.data);
    free(new_.data);
    free(ab.data);
    free(ip.data);
    return 0;
}
