// The ctest executables' one assertion: report a failed condition with its line and count it; each
// test's exit status is the number of failures.
#ifndef ARVC_TESTS_EXPECT_H
#define ARVC_TESTS_EXPECT_H

#include <cstdio>

static int failures = 0;
#define EXPECT(cond)                                                                \
    do {                                                                            \
        if (!(cond)) {                                                              \
            std::fprintf(stderr, "%s:%d: FAILED %s\n", __FILE__, __LINE__, #cond); \
            ++failures;                                                             \
        }                                                                           \
    } while (0)

#endif
