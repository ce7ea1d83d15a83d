// OpenBLAS 2 threads on one sgemm vs two pthreads each running a single-threaded sgemm on half of N.
#include <cblas.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
extern void openblas_set_num_threads(int);
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}
static int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
typedef struct{int M,N,K,n0,n1;float*x,*w,*y;}job;
static void*run(void*p){job*j=p;cblas_sgemm(CblasRowMajor,CblasNoTrans,CblasTrans,j->M,j->n1-j->n0,j->K,1,j->x,j->K,j->w+(long)j->n0*j->K,j->K,0,j->y+j->n0,j->N);return 0;}
int main(int argc,char**argv){
  int M=argc>1?atoi(argv[1]):512, reps=7;
  int shapes[][2]={{576,576},{192,576},{1536,576},{576,1536}}; int mult[]={2,2,2,1};
  float*x=malloc(4L*M*1536),*w=malloc(4L*1536*1536),*y=malloc(4L*M*1536);
  for(long i=0;i<(long)M*1536;i++)x[i]=(rand()%1000)/1000.f-.5f;
  for(long i=0;i<1536L*1536;i++)w[i]=(rand()%1000)/1000.f-.5f;
  for(int mode=0;mode<3;mode++){ double layer=0;
    for(int s=0;s<4;s++){int N=shapes[s][0],K=shapes[s][1];double t[16];
      for(int r=0;r<reps;r++){double t0=now();
        for(int i=0;i<10;i++){
          if(mode<2){openblas_set_num_threads(mode+1);cblas_sgemm(CblasRowMajor,CblasNoTrans,CblasTrans,M,N,K,1,x,K,w,K,0,y,N);}
          else{openblas_set_num_threads(1);pthread_t th;int h=(N/2+15)/16*16;job a={M,N,K,0,h,x,w,y},b={M,N,K,h,N,x,w,y};
            pthread_create(&th,0,run,&b);run(&a);pthread_join(th,0);}
        }
        t[r]=(now()-t0)/10;}
      qsort(t,reps,sizeof(double),cmp);double med=t[reps/2];layer+=mult[s]*med;
      printf("mode %s N=%d K=%d M=%d: %.3f ms %.1f GFLOP/s\n",mode==0?"blas1":mode==1?"blas2":"split2",N,K,M,med*1e3,2.0*M*N*K/med/1e9);}
    printf("  layer %.2f ms -> %.0f tok/s linear only\n",layer*1e3,M/(30*layer));}
}
