/*
 * memcheck: the guest's own check of its memory across migrations.
 *
 * Runs as the workload of the test guest (see build-guest.sh).  It takes
 * MiB of memory (memcheck_mb= on the kernel command line, 256 by default)
 * and, pass after pass, checks that every 64-bit word still holds what the
 * last pass wrote there, and writes it anew: a value derived from the pass
 * and the word's address.  A page that a migration lost, or delivered
 * stale, fails the check at its next touch.  Each pass prints one line on
 * the console:
 *
 *     memcheck: pass 12 ok (256 MiB)
 *     memcheck: pass 13 BAD: 3 words wrong, first at offset 0x1234000
 *
 * The host's tests read these lines on the serial console.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static uint64_t pattern(uint64_t pass, uint64_t index)
{
    /* Every word of every pass differs from the same word of the last */
    uint64_t x = (pass << 40) ^ index ^ 0x9e3779b97f4a7c15ull;

    x ^= x >> 31;
    x *= 0xbf58476d1ce4e5b9ull;
    return x ^ (x >> 29);
}

static unsigned long size_from_cmdline(void)
{
    unsigned long mb = 256;
    char line[4096];
    FILE *f = fopen("/proc/cmdline", "r");
    char *p;

    if (f) {
        if (fgets(line, sizeof(line), f)) {
            p = strstr(line, "memcheck_mb=");
            if (p) {
                mb = strtoul(p + strlen("memcheck_mb="), NULL, 10);
            }
        }
        fclose(f);
    }
    return mb;
}

int main(void)
{
    unsigned long mb = size_from_cmdline();
    size_t words = mb * 1024 * 1024 / sizeof(uint64_t);
    uint64_t *mem, pass, bad, first, i;

    setvbuf(stdout, NULL, _IOLBF, 0);
    mem = mmap(NULL, words * sizeof(uint64_t), PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (mem == MAP_FAILED) {
        printf("memcheck: cannot map %lu MiB\n", mb);
        return 1;
    }
    printf("memcheck: start (%lu MiB)\n", mb);
    for (i = 0; i < words; i++) {
        mem[i] = pattern(0, i);
    }
    for (pass = 1;; pass++) {
        bad = 0;
        first = 0;
        for (i = 0; i < words; i++) {
            if (mem[i] != pattern(pass - 1, i) && !bad++) {
                first = i * sizeof(uint64_t);
            }
            mem[i] = pattern(pass, i);
        }
        if (bad) {
            printf("memcheck: pass %llu BAD: %llu words wrong, first at "
                   "offset 0x%llx\n", (unsigned long long)pass,
                   (unsigned long long)bad, (unsigned long long)first);
        } else {
            printf("memcheck: pass %llu ok (%lu MiB)\n",
                   (unsigned long long)pass, mb);
        }
    }
}
