"""The locust users of the jangteo load test, weighted like a real market.

Mostly people reading (Browser) and apps watching over WebSockets (Watcher); fewer
Buyers racing for a few hot listings, Sellers listing and dropping prices, Chatters, and
Accounts rotating tokens. ``JANGTEO_LOAD_WEIGHT_<KIND>`` sets each kind's weight.

They import only what the locust image has too (locust, gevent, requests,
websocket-client) and ``loadtests.config``, so docker-compose's locust profile runs them.
"""

from loadtests.scenarios.accounts import Account
from loadtests.scenarios.browser import Browser
from loadtests.scenarios.buyer import Buyer
from loadtests.scenarios.chatter import Chatter
from loadtests.scenarios.seller import Seller
from loadtests.scenarios.watcher import Watcher

__all__ = ["Account", "Browser", "Buyer", "Chatter", "Seller", "Watcher"]
