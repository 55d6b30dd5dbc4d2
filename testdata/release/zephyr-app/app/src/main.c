/* The application these images stand for (built with west build -b nrf52840dk/nrf52840). */
#include <zephyr/kernel.h>

int main(void)
{
	for (;;) {
		k_sleep(K_SECONDS(1));
	}
	return 0;
}
