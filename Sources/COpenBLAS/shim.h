#include <cblas.h>
// Exported by OpenBLAS but not declared by every cblas.h.
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);
// LAPACK routines OpenBLAS exports (Fortran calling convention; the trailing size_t is the
// hidden length of the character argument).
void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info, size_t uplo_len);
void dpotri_(const char *uplo, const int *n, double *a, const int *lda, int *info, size_t uplo_len);
