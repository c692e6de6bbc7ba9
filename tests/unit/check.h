/* check.h - the smallest test harness: "ok - x" / "not ok - x", then
 * "N passed, N failed" (the line CI sums). */
#ifndef MOAT_CHECK_H
#define MOAT_CHECK_H
#include <stdio.h>

static int check_passed, check_failed;

#define CHECK(cond, ...)                                        \
    do {                                                        \
        if (cond) {                                             \
            check_passed++;                                     \
            printf("ok - ");                                    \
        } else {                                                \
            check_failed++;                                     \
            printf("not ok - (%s:%d) ", __FILE__, __LINE__);    \
        }                                                       \
        printf(__VA_ARGS__);                                    \
        printf("\n");                                           \
    } while (0)

static inline int check_done(void)
{
    printf("%d passed, %d failed\n", check_passed, check_failed);
    return check_failed ? 1 : 0;
}
#endif
