"""`gpt2-serve bench`: an HTTP load generator for OpenAI-compatible completion servers.

One job per module: workload (what to send), client (one streamed request, timed), runner
(concurrency and Poisson arrival-rate modes), stats (percentiles and throughput),
metrics_check (client figures against gpt2-serve's own Prometheus histograms), report (table
and JSON), plots (PNG, matplotlib only when asked for), cli (the flags); mixed (long prompts
amid streams), chat, chat_report and prefix_cache (multi-turn conversations beside the server's
prefix cache hit rate). Never imports torch.
"""
