import os,sys,time,signal,glob
pid=int(sys.argv[1]); worst=0; res=[]
for k in range(30):
    t=time.perf_counter(); os.kill(pid,signal.SIGSTOP); t1=time.perf_counter()
    while True:
        st=[]
        for f in glob.glob(f"/proc/{pid}/task/*/stat"):
            try: st.append(open(f).read().rsplit(')',1)[1].split()[0])
            except OSError: pass
        if all(s=='T' for s in st): break
    d=(time.perf_counter()-t1)*1000; res.append(d)
    os.kill(pid,signal.SIGCONT); time.sleep(0.05)
res.sort(); print("ms after kill() returned until every thread stopped: median %.2f max %.2f"%(res[15],res[-1]))
