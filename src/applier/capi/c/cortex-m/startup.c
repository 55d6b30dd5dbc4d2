/* Start-up for the C harness on QEMU's mps2-an386 (Cortex-M4F): the vector table, the FPU
 * switched on (the hard-float ABI), then newlib's semihosting crt0 (`_start`: .bss, heap,
 * argv from the host, main, exit). */
#include <stdint.h>

extern void _start(void);
extern void _exit(int);
extern uint32_t __stack;

void reset(void) {
    /* CPACR: full access to CP10 and CP11 (the FPU). */
    *(volatile uint32_t *)0xE000ED88 |= 0xFu << 20;
    __asm__ volatile("dsb\n isb");
    _start();
}

static void fault(void) {
    _exit(70);
}

__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))(&__stack), reset, fault, fault, fault, fault, fault, 0, 0, 0, 0,
    fault, fault, 0, fault, fault,
};
