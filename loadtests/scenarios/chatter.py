"""Chatter: asks a seller about a listing, over REST and over the socket, in one room.

Every message the server confirmed (REST 201/200, socket ``ack``) is recorded as
``chat`` with its client_id and the id the server gave it; the audit checks that each is
stored exactly once under that id. A socket send with no ack (timeout, ``unavailable``)
is sent again over REST with the same client_id, which is safe: a client_id is stored once.
The room channel is watched like a Watcher's channels (records ``stream``).
"""

from __future__ import annotations

import random
import uuid
from typing import Any

from locust import task
from locust.exception import StopUser

from loadtests.scenarios.common import (
    API,
    CONFIG,
    RECORDS,
    TIMEOUT,
    MarketUser,
    expect,
    fail,
    retryable,
)
from loadtests.scenarios.live import LiveSocket, live_socket
from loadtests.scenarios.market import HOT

LINES = ("안녕하세요, 아직 판매중인가요?", "네고 가능할까요?", "직거래 되나요?", "Still available?")


class Chatter(MarketUser):
    weight = CONFIG.weights["chatter"]
    role = "chatter"

    room: int
    live: LiveSocket | None = None

    def on_start(self) -> None:
        super().on_start()
        listings = HOT + self.others_listings()
        if not listings:
            raise StopUser()
        listing_id = random.choice(listings)
        with self.client.post(
            f"{API}/listings/{listing_id}/chats",
            headers=self.auth,
            name=f"{API}/listings/{{id}}/chats",
            catch_response=True,
            timeout=TIMEOUT,
        ) as response:
            body = (
                expect(response, 200, "id")
                if response.status_code == 200
                else expect(response, 201, "id")
            )
        if body is None:
            raise StopUser()
        self.room = int(body["id"])
        self.live = live_socket(self, [f"room:{self.room}"])

    def on_stop(self) -> None:
        if self.live is not None:
            self.live.close(CONFIG.drain)

    def keep(self, message: dict[str, Any], via: str) -> None:
        RECORDS.write(
            "chat",
            room_id=int(message["room_id"]),
            message_id=int(message["id"]),
            client_id=str(message["client_id"]),
            sender_id=self.user_id,
            via=via,
        )

    def send_rest(self, client_id: str, body: str) -> None:
        for attempt in range(3):
            with self.client.post(
                f"{API}/chats/{self.room}/messages",
                json={"body": body, "client_id": client_id},
                headers=self.auth_json,
                name=f"{API}/chats/{{id}}/messages",
                catch_response=True,
                timeout=TIMEOUT,
            ) as response:
                if retryable(response) and attempt < 2:
                    fail(response, f"no answer ({response.status_code}); same client_id again")
                    continue
                status = 200 if response.status_code == 200 else 201  # 200: a repeat
                message = expect(response, status, "id", "room_id", "client_id")
            if message is not None:
                self.keep(message, "rest")
            return

    @task(3)
    def say_over_rest(self) -> None:
        self.send_rest(str(uuid.uuid4()), random.choice(LINES))

    @task(3)
    def say_over_socket(self) -> None:
        assert self.live is not None
        client_id, body = str(uuid.uuid4()), random.choice(LINES)
        if self.live.ensure():
            frame = {"op": "send", "room": self.room, "body": body, "client_id": client_id}
            reply = self.live.request(f"ack:{client_id}", frame, "send->ack")
            if reply is not None and reply.get("op") == "ack":
                self.keep(reply["message"], "ws")
                return
        self.send_rest(client_id, body)  # not confirmed: the same client_id over REST

    @task(1)
    def read(self) -> None:
        with self.client.get(
            f"{API}/chats/{self.room}/messages",
            headers=self.auth,
            name=f"{API}/chats/{{id}}/messages (read)",
            catch_response=True,
            timeout=TIMEOUT,
        ) as response:
            body = expect(response, 200, "items")
        if body and body["items"]:
            with self.client.post(
                f"{API}/chats/{self.room}/read",
                json={"up_to": body["items"][0]["id"]},
                headers=self.auth_json,
                name=f"{API}/chats/{{id}}/read",
                catch_response=True,
                timeout=TIMEOUT,
            ) as response:
                expect(response, 204)

    @task(1)
    def ping(self) -> None:
        assert self.live is not None
        if self.live.ensure():
            self.live.ping()
