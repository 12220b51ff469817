"""The CLI's longer jobs, each a module: replay, rescore, demo, bench (and its worker and CPU
meter). May import anything in the project; nothing but ``streams.cli`` imports them.
"""
