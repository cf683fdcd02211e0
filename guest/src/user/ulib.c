/* Ring-3 support: the task stacks and a line builder (formatting runs natively). */
#include "user.h"

uint8_t user_stacks[USER_STACKS][USER_STACK_SIZE] __attribute__((aligned(16)));

static void put(struct uline *l, char c)
{
	if (l->len < sizeof(l->buf))
		l->buf[l->len++] = c;
}

void ul_str(struct uline *l, const char *s)
{
	while (*s)
		put(l, *s++);
}

static void num(struct uline *l, uint64_t v, unsigned base)
{
	char tmp[20];
	int n = 0;
	do {
		tmp[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	while (n)
		put(l, tmp[--n]);
}

void ul_dec(struct uline *l, uint64_t v)
{
	num(l, v, 10);
}

void ul_hex(struct uline *l, uint64_t v)
{
	num(l, v, 16);
}

void ul_write(struct uline *l)
{
	if (l->len == sizeof(l->buf))
		l->len--;
	l->buf[l->len++] = '\n';
	u_write(l->buf, l->len);
	l->len = 0;
}
